"""`gts config show|check`."""
from __future__ import annotations

import argparse


def config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "check"])
    p.add_argument("file", nargs="?", help="config file for `check`")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")


def config(args: argparse.Namespace, _options) -> int:
    from gts_megatron.config import describe_fields, dump_config, load_config, model_presets

    if args.action == "show":
        print(describe_fields())
        print(f"# model presets (model: <name>): {', '.join(model_presets())}")
    else:
        print(dump_config(load_config(args.file, args.set)), end="")
    return 0
