"""The config of one E4 training run: :class:`E4Config`, every field a flag of ``attentionrnn e4
train``."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from attentionrnn.data.generate import MAX_CANVAS, MAX_IMAGES, MIN_CANVAS
from attentionrnn.engine.config import RunConfig, option, seed_field
from attentionrnn.engine.errors import UserError
from attentionrnn.experiments.e4.data import DATASETS
from attentionrnn.experiments.e4.losses import LossWeights
from attentionrnn.experiments.e4.model import E4_ROWS, EDIT_QUERY
from attentionrnn.layers.query_term import QUERY_FUSIONS
from attentionrnn.layers.registry import attention_methods

__all__ = ["JUDGE_SEED", "TEACHER_SEED", "E4Config"]

#: the judge's seed: the same for every row and training seed
JUDGE_SEED = 1234
#: the default seed of the frozen classifier of ``--w-teacher`` (never the judge's)
TEACHER_SEED = 4321


def weight_field(default: float, help: str) -> Any:
    """A loss weight: a float option, at least 0."""
    return field(default=default, metadata=option(help, minimum=0))


#: The options of the digit tasks that CelebA refuses, with the reason.
DIGIT_ONLY = {
    "w_keep": "CelebA's classification loss already asks for the attributes an edit keeps",
    "w_apart": "CelebA's edits have no query",
    "w_identify": "CelebA's edits have no query",
    "locate_steps": "CelebA's edits have no known region",
    "edit_query": "CelebA's edits have no query",
}


@dataclass
class E4Config(RunConfig, out="runs/e4", epochs=10, patience=100):
    """Everything one training run depends on; each field is a flag of ``attentionrnn e4 train``."""

    # where the data lies does not change the result; the data's identity enters instead
    RUNTIME_FIELDS = (*RunConfig.RUNTIME_FIELDS, "data_dir", "mnist", "celeba_dir", "data",
                      "samples")  # fmt: skip
    #: the candidates of the mask-selectivity screening, added after the cpu-budget runs
    LATER_FIELDS = {"query_fusion": "add", "w_teacher": 0.0, "teacher_seed": TEACHER_SEED,
                    "w_keep": 0.0, "edit_query": "both", "w_apart": 0.0,
                    "w_identify": 0.0, "locate_steps": 0, "locate_lr": 1e-3}  # fmt: skip
    #: an epoch's learning rate (halved every lr_step epochs) and batches ((seed, epoch)) do not
    #: depend on the total, and the weights tested are the last epoch's by default: a longer
    #: budget extends the finished runs of a shorter one
    EXTENDABLE = True

    dataset: str = field(default="mref", metadata=option("editing task", choices=DATASETS))
    mask: str = field(
        default="arnn",
        metadata=option("mask head of the transformer modules: ctx (conv head, the baseline), "
                      "arnn (AttentionRNN), brnn (Block AttentionRNN)", choices=E4_ROWS),
    )  # fmt: skip
    batch_size: int = field(default=32, metadata=option("batch size", minimum=2))
    lr: float = field(default=2e-4, metadata=option("Adam learning rate (G and D)", positive=True))
    lr_step: int = field(default=6, metadata=option("epochs between lr decays", minimum=1))
    lr_decay: float = field(default=0.5, metadata=option("lr factor at each decay", positive=True))
    select: str = field(
        default="last",
        metadata=option("weights tested: the last epoch's (as GANs are usually used; validation "
                      "edit success is only as good as the judge) or the best validation edit "
                      "success", choices=("last", "edit_success")),
    )  # fmt: skip
    images: int = field(default=3000, metadata=option("digit tasks: images generated", minimum=1,
                                                    maximum=MAX_IMAGES))  # fmt: skip
    canvas: int = field(
        default=64,
        metadata=option("image side (digits: the generator's canvas; CelebA: resized to it)",
                      minimum=16, maximum=MAX_CANVAS),
    )  # fmt: skip
    data_seed: int = seed_field("digit tasks: seed of the generator")
    train_samples: int | None = field(
        default=None, metadata=option("use only this many training edits (quick runs)", minimum=2)
    )
    val_samples: int = field(default=500, metadata=option("validation edits", minimum=1))
    test_samples: int | None = field(
        default=2000, metadata=option("test edits (default 2000; all with 0)", minimum=0)
    )
    channels: int = field(default=16, metadata=option("editor width", minimum=1))
    d_channels: int = field(default=16, metadata=option("discriminator width", minimum=1))
    mask_hidden: int = field(
        default=16, metadata=option("hidden width of the mask head", minimum=1)
    )
    block_size: int = field(default=2, metadata=option("BRNN block size", minimum=1))
    query_fusion: str = field(
        default="add",
        metadata=option("how the condition (target one-hot and query) enters the mask head's "
                      "encoder: conv(f) + Uc or conv(f) * Uc (ctx, arnn, brnn)",
                      choices=QUERY_FUSIONS),
    )  # fmt: skip
    edit_query: str = field(
        default="both",
        metadata=option("digit tasks: where the query reaches an edit: the edit body and the "
                      "mask head (both), or the mask head only (mask: the body reads the target "
                      "colour alone, so only the mask can tell the queried digit from the others)",
                      choices=EDIT_QUERY),
    )  # fmt: skip
    w_cls: float = weight_field(1.0, "weight of the classification loss")
    w_rec: float = weight_field(10.0, "weight of the reconstruction loss")
    w_cycle: float = weight_field(10.0, "weight of the cycle loss")
    w_mask: float = weight_field(0.1, "weight of the mask sparsity loss")
    w_teacher: float = weight_field(
        0.0, "weight of a second classification loss of the edits, from a frozen attribute "
        "classifier trained on real images with --teacher-seed (the judge's architecture, never "
        "the judge); 0: none",
    )
    w_keep: float = weight_field(
        0.0, "digit tasks: weight of classifying another digit of the edited image as its "
        "unchanged colour (by D's classifier, and by the teacher with --w-teacher): ModularGAN's "
        "classification of the attributes an edit keeps; 0: none",
    )
    w_apart: float = weight_field(
        0.0, "digit tasks: weight of the overlap (cosine similarity) of the masks that the "
        "queried digit and another digit of the same image give for the same edit; 0: none",
    )
    w_identify: float = weight_field(
        0.0, "digit tasks: weight of classifying the query's class from the encoder's features "
        "pooled by the mask (a linear classifier trained with the editor; only the query's label "
        "is used); 0: none",
    )
    locate_steps: int = field(
        default=0, metadata=option(
            "digit tasks: steps of a first stage before the GAN (a curriculum): the encoder and "
            "the mask heads trained alone, supervised on the queried digit's strokes (binary "
            "cross-entropy); then the GAN trains without it; 0: none", minimum=0),
    )  # fmt: skip
    locate_lr: float = field(
        default=1e-3, metadata=option("Adam learning rate of the --locate-steps stage",
                                      positive=True),
    )  # fmt: skip
    teacher_seed: int = seed_field(f"seed of the --w-teacher classifier (not the judge's "
                                   f"{JUDGE_SEED})", default=TEACHER_SEED)  # fmt: skip
    judge_epochs: int = field(default=8, metadata=option("epochs of the judge classifier",
                                                       minimum=1))  # fmt: skip
    judge_channels: int = field(default=32, metadata=option("judge width", minimum=1))
    samples: int = field(default=6, metadata=option("rows of RUN_DIR/samples.png (0: none)",
                                                  minimum=0, maximum=64))  # fmt: skip
    max_images: int | None = field(
        default=None, metadata=option("CelebA: read only the first images", minimum=1)
    )
    data: str | None = field(
        default=None, metadata=option("digit tasks: an existing generated .npz (default: "
                                    "generate into the cache)", metavar="FILE"),
    )  # fmt: skip
    mnist: str | None = field(
        default=None, metadata=option("MNIST folder (default: see 'attentionrnn e1 generate')",
                                    metavar="DIR"),
    )  # fmt: skip
    celeba_dir: str | None = field(
        default=None, metadata=option("CelebA folder (default $ATTENTIONRNN_CELEBA_DIR)",
                                    metavar="DIR"),
    )  # fmt: skip
    data_dir: str | None = field(
        default=None, metadata=option("cache of generated data (default $ATTENTIONRNN_DATA_DIR or "
                                    "~/.cache/attentionrnn)", metavar="DIR"),
    )  # fmt: skip

    def check(self) -> None:
        super().check()
        if self.canvas % 4:
            raise UserError(f"canvas must be divisible by 4 (the editor downsamples twice), "
                            f"got {self.canvas}")  # fmt: skip
        if self.dataset != "celeba" and self.canvas < MIN_CANVAS:
            raise UserError(f"canvas must be >= {MIN_CANVAS} for the digit tasks, "
                            f"got {self.canvas}")  # fmt: skip
        if self.teacher_seed == JUDGE_SEED:
            raise UserError(f"teacher_seed must differ from the judge's seed {JUDGE_SEED} (the "
                            f"judge stays an independent measure)")  # fmt: skip
        if self.dataset == "celeba":  # the digit tasks' options: set away from their default
            for name, why in DIGIT_ONLY.items():
                if getattr(self, name) != self.LATER_FIELDS[name]:
                    raise UserError(f"{name} applies to the digit tasks: {why}")
        takes = inspect.signature(attention_methods()[self.mask].module).parameters
        if self.query_fusion != "add" and "query_fusion" not in takes:
            raise UserError(f"query_fusion {self.query_fusion!r} needs a mask head with a query "
                            f"fusion (ctx, arnn, brnn); {self.mask} has none")  # fmt: skip

    def weights(self) -> LossWeights:
        return LossWeights(self.w_cls, self.w_rec, self.w_cycle, self.w_mask, self.w_teacher,
                           self.w_keep, self.w_apart, self.w_identify)  # fmt: skip
