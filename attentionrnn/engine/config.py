"""Command-line flags generated from a configuration dataclass.

Each field becomes ``--field-name`` with the field's type, default, and the ``help`` and
``choices`` given in its metadata; a ``bool`` field that defaults to true becomes
``--no-field-name``. Fields whose metadata says ``cli=False`` are left out. So a config field is
declared once, and the flag, the default shown in ``--help`` and the copy into the config cannot
drift apart. :func:`check_config` checks a config against the same metadata (``choices``,
``minimum``, ``maximum``, ``positive``; a ``float`` must be finite unless ``finite=False``), for
configs made in Python as much as on the command line, and the flags check their values with the
same code as they are parsed (:func:`checked_type`), so a bad value is one line before anything
runs. Seeds are declared by :func:`seed_field` in every experiment (``0 <= seed < 2**32``).

The fields the engine reads of every run (``out``, ``epochs``, ``seed``, ``patience``) are declared
once, in :class:`RunConfig`; an experiment's config gives them its own defaults as class keywords
(``class E3Config(RunConfig, out="runs/e3", epochs=20)``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from attentionrnn.engine.errors import UserError
from attentionrnn.engine.precision import PRECISIONS

__all__ = [
    "SEED_LIMITS",
    "RunConfig",
    "add_config_arguments",
    "check_config",
    "check_value",
    "checked_type",
    "config_from_args",
    "option",
    "seed_field",
]

#: Metadata keys that constrain a value rather than describe a flag.
_CHECKS = ("minimum", "maximum", "positive", "finite")

#: The limits of every seed (numpy's and torch's seeds are 32 / 64 bits; ``-1`` or a 24-digit
#: number used to fail deep inside one of them, differently per experiment).
SEED_LIMITS: dict[str, Any] = {"minimum": 0, "maximum": 2**32 - 1}


def option(help: str, **kw: Any) -> dict[str, Any]:
    """A config field's metadata: its ``--help`` text and the flag's keywords or limits."""
    return {"help": help, **kw}


def seed_field(help: str = "training seed", default: int = 0) -> Any:
    """A seed field: ``0 <= seed < 2**32``, the same in every experiment."""
    return field(default=default, metadata={"help": f"{help} (0 ... 2**32-1)", **SEED_LIMITS})


def check_value(name: str, value: Any, limits: dict[str, Any]) -> str | None:
    """Why ``value`` breaks ``limits`` (``choices``, ``minimum``, ``maximum``, ``positive``;
    a float must be finite unless ``finite`` is false), or ``None`` where it does not."""
    if value is None:
        return None
    choices = limits.get("choices")
    if choices is not None and value not in choices:
        return f"{name} must be one of {', '.join(map(str, choices))}; got {value!r}"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if limits.get("positive") and not (math.isfinite(value) and value > 0):
        return f"{name} must be a positive number, got {value}"
    if isinstance(value, float) and limits.get("finite", True) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    minimum = limits.get("minimum")
    if minimum is not None and not value >= minimum:  # NaN fails too
        return f"{name} must be >= {minimum}, got {value}"
    maximum = limits.get("maximum")
    if maximum is not None and not value <= maximum:
        return f"{name} must be <= {maximum}, got {value}"
    return None


def checked_type(kind: type, name: str, limits: dict[str, Any]) -> Any:
    """An argparse ``type`` that parses ``kind`` and checks ``limits`` (:func:`check_value`):
    a bad value is argparse's one-line error naming the flag."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"invalid {kind.__name__} value: {text!r}") from None
        problem = check_value(name, value, limits)
        if problem is not None:
            raise argparse.ArgumentTypeError(problem)
        return value

    parse.__name__ = kind.__name__  # argparse names the type in its messages
    return parse


def _base_type(annotation: Any) -> tuple[type, bool]:
    """``(type, optional)`` of a field annotation such as ``int`` or ``str | None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args:
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser,
    cls: type,
    overrides: dict[str, dict[str, Any]] | None = None,
    names: Sequence[str] | None = None,
) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser`` (``names``: only those
    fields' flags, in that order).

    ``overrides`` maps a field name to extra ``add_argument`` keywords (e.g. ``required``).
    """
    hints = typing.get_type_hints(cls)
    shared = {f.name for f in dataclasses.fields(RunConfig)} - set(RunConfig.RUN_FIELDS)
    # the run's and the experiment's own flags first, then how every run config runs
    fields = sorted(dataclasses.fields(cls), key=lambda f: f.name in shared)
    if names is not None:
        by_name = {f.name: f for f in fields}
        fields = [by_name[n] for n in names]
    for f in fields:
        meta = {k: v for k, v in f.metadata.items() if k not in _CHECKS}
        limits = {k: v for k, v in f.metadata.items() if k in _CHECKS}
        if not meta.pop("cli", True):
            continue
        kind, _ = _base_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs: dict[str, Any] = {"dest": f.name, "help": meta.pop("help", None)}
        kwargs.update(meta)
        kwargs.update((overrides or {}).get(f.name, {}))
        if kind is bool:
            if default and kwargs["help"]:
                kwargs["help"] = f"turn off: {kwargs['help']}"
            flag = _flag(("no_" if default else "") + f.name)
            kwargs["action"] = "store_false" if default else "store_true"
            kwargs["default"] = default
            parser.add_argument(flag, **kwargs)
            continue
        if kind in (int, float):
            kwargs.setdefault("type", checked_type(kind, f.name, limits))
        kwargs.setdefault("type", kind)
        kwargs.setdefault("default", default)
        if "metavar" not in kwargs and "choices" not in kwargs:
            kwargs["metavar"] = f.name.upper()
        parser.add_argument(_flag(f.name), **kwargs)


def config_from_args(cls: type, args: argparse.Namespace, **values: Any) -> Any:
    """An instance of ``cls`` from the parsed flags; ``values`` set fields that have no flag."""
    names = {f.name for f in dataclasses.fields(cls)}
    given = {k: v for k, v in vars(args).items() if k in names}
    return cls(**{**given, **values})


def check_config(config: Any) -> None:
    """Raise :class:`UserError` naming the first field of ``config`` outside its metadata's
    ``choices``, ``minimum`` or ``maximum``, not > 0 where ``positive`` is set, or a float that
    is not finite (:func:`check_value`). ``None`` passes for optional fields."""
    for f in dataclasses.fields(config):
        problem = check_value(f.name, getattr(config, f.name), f.metadata)
        if problem is not None:
            raise UserError(problem)


@dataclass
class RunConfig:
    """The fields every experiment's run config shares: the run's folder, length, seed and
    patience (:data:`RUN_FIELDS`, what the engine reads of every run), then how it runs.

    An experiment's config subclasses this and adds its own fields; it gives the run fields its
    own defaults as class keywords, e.g. ``class E4Config(RunConfig, out="runs/e4", epochs=10)``
    (their help and limits stay these). ``RUNTIME_FIELDS`` (extended by the subclass) names the
    fields that do not change the result, which :meth:`fingerprint` leaves out so that a run may
    be resumed with other values of them.
    """

    #: the fields the engine reads of every run (listed among the experiment's own flags)
    RUN_FIELDS: ClassVar[tuple[str, ...]] = ("out", "epochs", "seed", "patience")
    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = ("out", "progress", "threads", "eval_batch_size")
    #: fields added after runs were recorded, with their value in those runs: left out of the
    #: fingerprint at that value, so that the older runs still resume
    LATER_FIELDS: ClassVar[dict[str, Any]] = {}
    #: True where nothing of an epoch depends on the total (its learning rate and batch stream
    #: are functions of the epoch alone) and the weights tested are the last epoch's: then a run
    #: asked for more epochs than it trained resumes from its checkpoint, finished or not, and
    #: ends as a run of the new length would (budgets grow until the curves are flat)
    EXTENDABLE: ClassVar[bool] = False

    out: str = field(default="runs/run", metadata=option("run folder", metavar="RUN_DIR"))
    epochs: int = field(default=300, metadata=option("maximum epochs", minimum=1))
    seed: int = seed_field()
    patience: int = field(
        default=50,
        metadata=option("early-stopping patience (epochs without a better val score)", minimum=1),
    )

    precision: str = field(
        default="auto",
        metadata={
            "help": "auto: bf16 autocast where the CPU has native bf16 (AMX / AVX-512 BF16), "
            "else fp32",
            "choices": PRECISIONS,
        },
    )
    channels_last: bool = field(
        default=True, metadata={"help": "run the conv layers in channels_last memory order"}
    )
    eval_batch_size: int = field(
        default=500, metadata={"help": "batch size of evaluation", "minimum": 1}
    )
    threads: int | None = field(
        default=None, metadata={"help": "torch threads per process", "minimum": 1, "maximum": 1024}
    )
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __init_subclass__(cls, **defaults: Any) -> None:
        """Give the inherited fields named in ``defaults`` (class keywords) those defaults, with
        their help and limits kept, before ``@dataclass`` reads the subclass."""
        super().__init_subclass__()
        annotations = cls.__dict__.get("__annotations__", {})
        for name, value in defaults.items():
            inherited = next((b.__dataclass_fields__[name] for b in cls.__mro__[1:]
                              if name in getattr(b, "__dataclass_fields__", {})), None)  # fmt: skip
            if inherited is None:
                raise TypeError(f"{cls.__name__}: no inherited config field {name!r}")
            setattr(cls, name, field(default=value, metadata=inherited.metadata))
            annotations[name] = inherited.type
        cls.__annotations__ = annotations

    def check(self) -> None:
        """Raise :class:`UserError` naming the first invalid field."""
        check_config(self)

    def fingerprint(self) -> dict[str, Any]:
        """The fields that determine the result (compared when resuming)."""
        d = dataclasses.asdict(self)
        for key in self.RUNTIME_FIELDS:
            d.pop(key, None)
        for key, value in self.LATER_FIELDS.items():
            if d.get(key) == value:
                del d[key]
        return d
