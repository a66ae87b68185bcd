"""Command-line flags generated from a configuration dataclass.

Each field becomes ``--field-name`` with the field's type, default, and the ``help`` and
``choices`` given in its metadata; a ``bool`` field that defaults to true becomes
``--no-field-name``. Fields whose metadata says ``cli=False`` are left out. So a config field is
declared once, and the flag, the default shown in ``--help`` and the copy into the config cannot
drift apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any

__all__ = ["add_config_arguments", "config_from_args"]


def _base_type(annotation: Any) -> tuple[type, bool]:
    """``(type, optional)`` of a field annotation such as ``int`` or ``str | None``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args:
        return args[0], len(args) < len(typing.get_args(annotation))
    return annotation, False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def add_config_arguments(
    parser: argparse.ArgumentParser, cls: type, overrides: dict[str, dict[str, Any]] | None = None
) -> None:
    """Add one flag per field of the dataclass ``cls`` to ``parser``.

    ``overrides`` maps a field name to extra ``add_argument`` keywords (e.g. ``required``).
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
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
