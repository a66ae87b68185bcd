"""Synthetic attribute-prediction data (MREF / MDIST / MBG) and its MNIST sources.

The files are read by :class:`attentionrnn.data.attribute.E1Data`.
"""

from attentionrnn.data.generate import COLOR_NAMES, DATASETS, PALETTE, generate_dataset
from attentionrnn.data.mnist import MnistDigits, MnistError, load_mnist

__all__ = [
    "COLOR_NAMES",
    "DATASETS",
    "PALETTE",
    "MnistDigits",
    "MnistError",
    "generate_dataset",
    "load_mnist",
]
