"""`gts config show|check`."""
from __future__ import annotations

import argparse

from gts_megatron.config import describe_fields, dump_config, load_config, model_presets
from gts_megatron.config.recipe import describe_recipe
from gts_megatron.errors import GtsError


def config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["show", "check"])
    p.add_argument("file", nargs="?", help="config file for `check`")
    p.add_argument("--recipe", action="store_true", help="show: the fields of a `gts run` recipe instead")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.add_argument("--world-size", type=int,
                   help="check the run as `gts pretrain`/`gts train` would start it on this many processes "
                        "(default: tensor x data when parallel.data is set, else 1)")


def config(args: argparse.Namespace, _options) -> int:
    if args.action == "show" and args.recipe:
        print(describe_recipe())
        return 0
    if args.action == "show":
        print(describe_fields())
        print(f"# model presets (model: <name>): {', '.join(model_presets())}")
        return 0
    cfg = load_config(args.file, args.set)
    world = args.world_size or cfg.parallel.tensor * (cfg.parallel.data or 1)
    if world < 1:
        raise GtsError(f"--world-size {world}: must be at least 1")
    from gts_megatron.contracts.preflight import preflight

    preflight(cfg, world)  # the very checks pretrain and train run before starting a process
    print(dump_config(cfg), end="")
    return 0
