"""The `gts` command: parses arguments and calls one function per pipeline stage."""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

from gts_megatron.errors import GtsError

# megatron-core announces every missing optional accelerator library; they are optional here
# and torch's checkpoint code warns about its own APIs that megatron-core 0.16.1 calls
for _pattern in (r".*Apex is not installed.*", r".*Transformer Engine and Apex are not installed.*",
                 r".*full scope is deprecated.*", r".*`load_state_dict` is deprecated.*",
                 r".*Please use DTensor instead.*", r".*`save_state_dict` is deprecated.*"):
    warnings.filterwarnings("ignore", message=_pattern)


def _add_run_args(p: argparse.ArgumentParser, default_run_dir: str) -> None:
    p.add_argument("--config", help="run config YAML (see `gts config show`); defaults if omitted")
    p.add_argument("--run-dir", default=default_run_dir, help="where the run's artifacts go")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (repeatable), e.g. --set train.steps=20")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="processes to start on this machine (ignored under torchrun or srun)")


def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = [args.command, "--run-dir", args.run_dir]
    if args.config:
        argv += ["--config", args.config]
    for item in args.set:
        argv += ["--set", item]
    return argv


def _exit_code(result) -> int:
    return 128 + result.interrupted_by if result.interrupted_by else 0


def cmd_pretrain(args: argparse.Namespace) -> int:
    """Train a dense base model from scratch."""
    from gts_megatron.config import load_config
    from gts_megatron.runtime.launch import in_launched_worker, launch_local

    cfg = load_config(args.config, args.set)
    if not in_launched_worker():
        if cfg.train.init_from:  # a missing or foreign checkpoint is refused before any work
            from gts_megatron.training.checkpoint import check_model_matches, read_meta

            check_model_matches(Path(cfg.train.init_from), read_meta(Path(cfg.train.init_from)), cfg.model)
        if args.nproc_per_node < 1:
            raise GtsError(f"--nproc-per-node {args.nproc_per_node}: must be at least 1")
        cfg.data_parallel_size(args.nproc_per_node)  # refuse a bad layout before spawning
        if args.nproc_per_node > 1:
            return launch_local(_worker_argv(args), args.nproc_per_node)
    from gts_megatron.base.pretrain import pretrain

    return _exit_code(pretrain(cfg, Path(args.run_dir)))


def cmd_demo(args: argparse.Namespace) -> int:
    """The main job: for now, dense pretraining of the demo model on synthetic data."""
    from gts_megatron.demo import demo_args

    return cmd_pretrain(demo_args(args))


def cmd_config(args: argparse.Namespace) -> int:
    """Print the documented config fields, or validate a config file."""
    from gts_megatron.config import describe_fields, dump_config, load_config, model_presets

    if args.action == "show":
        print(describe_fields())
        print(f"# model presets (model: <name>): {', '.join(model_presets())}")
    else:
        print(dump_config(load_config(args.file, args.set)), end="")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the `gts` command."""
    parser = argparse.ArgumentParser(prog="gts", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("pretrain", help=cmd_pretrain.__doc__)
    _add_run_args(p, "runs/pretrain")
    p.set_defaults(func=cmd_pretrain)

    p = sub.add_parser("demo", help=cmd_demo.__doc__)
    _add_run_args(p, "runs/demo")
    p.add_argument("--quick", action="store_true", help="a shorter run (a minute on 2 cores)")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("config", help=cmd_config.__doc__)
    p.add_argument("action", choices=["show", "check"])
    p.add_argument("file", nargs="?", help="config file for `check`")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `gts` console command."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except GtsError as exc:
        from gts_megatron.runtime.launch import report_worker_error

        if not report_worker_error(str(exc)):
            print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
