"""Command-line flags generated from the typed config sections, shared by every `gts` parser."""
from __future__ import annotations

import argparse
import typing
from typing import Literal, Optional


def comma_list(value: str) -> list[str]:
    """``"en, fr,ru"`` -> ``["en", "fr", "ru"]`` (the type of list-valued flags)."""
    return [item.strip() for item in value.split(",") if item.strip()]


def int_list(value: str) -> list[int]:
    """``"1,2, 3"`` -> ``[1, 2, 3]`` (the type of integer-list flags)."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a comma-separated list of integers") from None


def field_options(section, args: argparse.Namespace):
    """The typed options of a command from its --flags (unset flags take the section's defaults)."""
    from gts_megatron.config import build_options

    return build_options(section, {name: getattr(args, name) for name in section.model_fields
                                   if getattr(args, name, None) is not None})


def add_field_flags(p: argparse.ArgumentParser, section, names: list[str]) -> None:
    """One --flag per config field, typed and documented from the field (a Literal field's values
    become the flag's choices; a list of strings is given comma-separated)."""
    for name in names:
        field = section.model_fields[name]
        flag = "--" + name.replace("_", "-")
        description = (field.description or "").replace("%", "%%")  # argparse formats help with %
        if field.annotation is bool:
            p.add_argument(flag, action="store_true", default=None, help=description)
            continue
        if field.is_required():
            help_text = f"{description} (required)"
        else:
            default = field.get_default(call_default_factory=True)
            shown = ",".join(map(str, default)) if isinstance(default, list) else default
            help_text = f"{description} (default {shown})"
        if typing.get_origin(field.annotation) is Literal:
            choices = typing.get_args(field.annotation)
            p.add_argument(flag, type=type(choices[0]), choices=choices, help=help_text)
        elif list in (typing.get_origin(field.annotation),
                      *(typing.get_origin(a) for a in typing.get_args(field.annotation))):  # [Optional] list
            p.add_argument(flag, type=int_list if "int" in str(field.annotation) else comma_list, help=help_text)
        else:
            kind = next((t for t in (int, float) if field.annotation in (t, Optional[t])), str)
            p.add_argument(flag, type=kind, help=help_text)
