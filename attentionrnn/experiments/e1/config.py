"""The config of one E1 training run: :class:`E1Config`, every field a flag of ``attentionrnn e1
train``."""

from __future__ import annotations

from dataclasses import dataclass, field

from attentionrnn.data.attribute import TASKS
from attentionrnn.data.generate import CANVAS, DATASETS, MAX_CANVAS, MAX_IMAGES, MIN_CANVAS
from attentionrnn.engine.config import RunConfig, option, seed_field
from attentionrnn.experiments.e1.rows import ROWS

__all__ = ["E1Config", "TrainConfig"]


#: Mean number of (image, query) samples per image, measured on the generator (5–9 digits are
#: drawn, but large digits often leave no room for all of them): 3955 samples from 700 images.
SAMPLES_PER_IMAGE = 5.65
OPTIMIZERS = ("rmsprop", "adam")


@dataclass
class E1Config(RunConfig):
    """Everything one training run depends on; each field is a flag of ``attentionrnn e1 train``
    (the fields of :class:`~attentionrnn.engine.config.RunConfig` too)."""

    RUNTIME_FIELDS = (*RunConfig.RUNTIME_FIELDS, "data_dir", "mnist")
    LATER_FIELDS = {"canvas": CANVAS, "query_fusion": "add", "feedback": True, "patience_from": 0}

    dataset: str = field(default="mref", metadata=option("dataset", choices=DATASETS))
    attention: str = field(default="arnn", metadata=option("attention method", choices=ROWS))
    samples: int = field(
        default=50000,
        metadata=option(
            "(image, query) samples to generate, split 60/20/20 (PAN: 50000)",
            minimum=1,
            maximum=int(MAX_IMAGES * SAMPLES_PER_IMAGE),
        ),
    )
    task: str = field(
        default="color",
        metadata=option(
            "color: query a digit, predict its colour; digit: the inverse", choices=tuple(TASKS)
        ),
    )
    data: str | None = field(
        default=None, metadata=option("use this dataset file", metavar="FILE.npz")
    )
    data_seed: int = seed_field("seed of the generated data")
    canvas: int = field(
        default=CANVAS,
        metadata=option(
            f"image side of the generated data in pixels (PAN: {CANVAS}; digit sizes scale "
            "with it)",
            minimum=MIN_CANVAS,
            maximum=MAX_CANVAS,
        ),
    )
    data_dir: str | None = field(
        default=None,
        metadata=option(
            "cache folder of generated datasets (default $ATTENTIONRNN_DATA_DIR or "
            "~/.cache/attentionrnn/e1)",
            metavar="DIR",
        ),
    )
    mnist: str | None = field(
        default=None, metadata=option("folder of the MNIST IDX files", metavar="DIR")
    )
    batch_size: int = field(
        default=200, metadata=option("global batch size (batch norm needs >= 2)", minimum=2)
    )
    optimizer: str = field(
        default="rmsprop", metadata=option("optimiser (PAN: rmsprop)", choices=OPTIMIZERS)
    )
    lr: float = field(default=0.003, metadata=option("learning rate", positive=True))
    rmsprop_alpha: float = field(
        default=0.9, metadata=option("RMSprop smoothing constant", minimum=0, maximum=1)
    )
    clip_norm: float = field(default=5.0, metadata=option("gradient-norm clip", positive=True))
    lr_decay: float = field(default=1.5, metadata=option("learning-rate divisor", positive=True))
    lr_decay_start: int = field(default=30, metadata=option("first epoch of the decay", minimum=0))
    lr_decay_every: int = field(default=10, metadata=option("epochs between decays", minimum=1))
    patience_from: int = field(
        default=0,
        metadata=option(
            "epochs before this one (0-based) do not count towards --patience: early stopping "
            "waits for a task whose accuracy stays at chance for a while (PAN: 0)",
            minimum=0,
        ),
    )
    lr_warmup_epochs: int = field(
        default=0,
        metadata=option(
            "epochs over which the rate ramps up to --lr: lr*(e+1)/(n+1) in epoch e < n (PAN: 0)",
            minimum=0,
        ),
    )
    attention_hidden: int | None = field(
        default=None, metadata=option("hidden width of the attention modules", minimum=1)
    )
    layer4_gate: str | None = field(
        default=None,
        metadata=option(
            "gate of the last attention layer (default: PAN's softmax)",
            choices=("sigmoid", "softmax"),
        ),
    )
    query_fusion: str = field(
        default="add",
        metadata=option(
            "how the attention encoder joins image and query (ARNN, BRNN, CTX): "
            "conv(x) + Uq or conv(x) * Uq",
            choices=("add", "mul"),
        ),
    )
    feedback: bool = field(
        default=True,
        metadata=option("feed the predicted attention values into the scan (ARNN, BRNN)"),
    )


#: E1's config under its former name
TrainConfig = E1Config
