"""The config of one E3 training run: :class:`E3Config`, every field a flag of ``attentionrnn e3
train``."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from attentionrnn.engine.config import RunConfig, option, seed_field
from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e3.data import DATASETS
from attentionrnn.experiments.e3.model import E3_ROWS

__all__ = ["E3Config"]


@dataclass
class E3Config(RunConfig, out="runs/e3", epochs=20, patience=6):
    """Everything one training run depends on; each field is a flag of ``attentionrnn e3 train``."""

    # where the data lies does not change the result; the dataset's identity enters instead
    RUNTIME_FIELDS = (*RunConfig.RUNTIME_FIELDS, "data_dir", "vqa_dir", "easy_vqa_dir")
    LATER_FIELDS = {"curriculum_epochs": 0}

    dataset: str = field(default="easy_vqa", metadata=option("dataset", choices=DATASETS))
    attention: str = field(
        default="arnn",
        metadata=option(
            "attention: mcb (MCB's conv attention), arnn (AttentionRNN on the question), brnn "
            "(Block AttentionRNN), none (mean pool); oracle (reference: the mask on the "
            "question's object boxes, generated set only)",
            choices=E3_ROWS,
        ),
    )
    batch_size: int = field(default=64, metadata=option("global batch size", minimum=2))
    lr: float = field(default=1e-3, metadata=option("Adam learning rate", positive=True))
    lr_step: int = field(default=8, metadata=option("epochs between lr decays", minimum=1))
    lr_decay: float = field(default=0.5, metadata=option("lr factor at each decay", positive=True))
    clip_norm: float = field(default=10.0, metadata=option("gradient-norm clip", positive=True))
    curriculum_epochs: int = field(
        default=0,
        metadata=option(
            "generated set: train the first N epochs on the non-relational questions only, then "
            "on all (lr decays and early stopping count from the end of the curriculum)",
            minimum=0,
        ),
    )
    val_images: int = field(
        default=400,
        metadata=option("training images whose questions are held out for validation", minimum=0),
    )
    train_questions: int | None = field(
        default=None,
        metadata=option("use only this many training questions (quick runs)", minimum=1),
    )
    test_questions: int | None = field(
        default=None, metadata=option("use only this many test questions (quick runs)", minimum=1)
    )
    channels: int = field(default=64, metadata=option("width of the image grid", minimum=1))
    blocks: int = field(
        default=3,
        metadata=option(
            "CNN blocks (64 px -> 8x8 grid; each halves the image)", minimum=1, maximum=8
        ),  # fmt: skip
    )
    embed: int = field(default=32, metadata=option("word embedding width", minimum=1))
    question_hidden: int = field(default=64, metadata=option("question RNN width", minimum=1))
    rnn: str = field(default="gru", metadata=option("question encoder", choices=("gru", "lstm")))
    mcb_dim: int = field(default=1024, metadata=option("MCB sketch size (MCB: 16000)", minimum=2))
    glimpses: int = field(default=2, metadata=option("attention glimpses (MCB: 2)", minimum=1))
    attention_hidden: int = field(
        default=16, metadata=option("hidden width of the ARNN / BRNN scan", minimum=1)
    )
    query_fusion: str = field(
        default="mul",
        metadata=option(
            "image-question fusion in the ARNN / BRNN / CTX encoder", choices=("mul", "add")
        ),
    )
    block_size: int = field(default=2, metadata=option("BRNN block size", minimum=1))
    coords: bool = field(
        default=True, metadata=option("append x / y coordinate maps to the image grid")
    )
    max_answers: int = field(
        default=3000, metadata=option("answer classes: the most frequent training answers",
                                    minimum=2),
    )  # fmt: skip
    image_size: int = field(
        default=64, metadata=option("image side (generated set; VQA v2 images are resized)",
                                  minimum=16),
    )  # fmt: skip
    generated_train_images: int = field(
        default=4000, metadata=option("generated set: training images", minimum=2)
    )
    generated_test_images: int = field(
        default=1000, metadata=option("generated set: test images", minimum=1)
    )
    generated_seed: int = seed_field("generated set: seed of the generator")
    max_questions: int | None = field(
        default=None,
        metadata=option(
            "VQA v2: read only the first questions of each split (quick runs)", minimum=1
        ),
    )
    vqa_dir: str | None = field(
        default=None,
        metadata=option("VQA v2 folder (default $ATTENTIONRNN_VQA_DIR)", metavar="DIR"),
    )
    easy_vqa_dir: str | None = field(
        default=None,
        metadata=option("easy-VQA data folder (default: the installed easy-vqa package)",
                      metavar="DIR"),
    )  # fmt: skip
    data_dir: str | None = field(
        default=None,
        metadata=option("cache of decoded images (default $ATTENTIONRNN_DATA_DIR or "
                      "~/.cache/attentionrnn/e3)", metavar="DIR"),
    )  # fmt: skip

    def check(self) -> None:
        super().check()
        if self.image_size >> self.blocks < 1:
            raise UserError(
                f"blocks {self.blocks} halve a {self.image_size}-pixel image to nothing; at most "
                f"{int(math.log2(self.image_size))} blocks for --image-size {self.image_size}"
            )
