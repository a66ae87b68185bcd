"""AttentionRNN: a structured spatial attention layer for PyTorch.

The attention mask is predicted sequentially in raster-scan and inverse raster-scan order by a
diagonal LSTM over the skewed feature map, so each attention value depends on the image and on the
attention values predicted before it (Khandelwal & Sigal, ICCV 2019).
"""

from attentionrnn.layers.attention_rnn import AttentionRNN, BlockAttentionRNN
from attentionrnn.layers.factory import build_attention
from attentionrnn.layers.reference import ReferenceAttentionRNN, ReferenceBlockAttentionRNN

__version__ = "0.1.0"

__all__ = [
    "AttentionRNN",
    "BlockAttentionRNN",
    "ReferenceAttentionRNN",
    "ReferenceBlockAttentionRNN",
    "build_attention",
    "__version__",
]
