"""`gts pretrain`, `train`, `experiment` and `adapt`: the commands that train."""
from __future__ import annotations

import argparse
from pathlib import Path

from gts_megatron.errors import GtsError
from gts_megatron.config import load_config
from gts_megatron.runtime.launch import in_launched_worker, launch_local


def _run_arguments(p: argparse.ArgumentParser, default_run_dir: str) -> None:
    p.add_argument("--config", help="run config YAML (see `gts config show`); defaults if omitted")
    p.add_argument("--run-dir", default=default_run_dir, help="where the run's artifacts go")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field (repeatable), e.g. --set train.steps=20")
    p.add_argument("--nproc-per-node", type=int, default=1,
                   help="processes to start on this machine (ignored under torchrun or srun)")


def _worker_argv(args: argparse.Namespace) -> list[str]:
    argv = [args.command, "--run-dir", args.run_dir]
    if getattr(args, "stage", None):
        argv += ["--stage", args.stage]
    if args.config:
        argv += ["--config", args.config]
    for item in args.set:
        argv += ["--set", item]
    return argv


# the function that runs each training command, imported only once the run has been checked:
# megatron's import alone takes seconds, and a refusal should not wait for it
_STAGES = {"pretrain": ("gts_megatron.base.pretrain", "pretrain"), "train": ("gts_megatron.train", "train_stage")}


def _run_training(args: argparse.Namespace, cfg) -> int:
    """Check what can be checked before any process starts, then run the command's stage
    (``_STAGES``) here or in ``--nproc-per-node`` local workers."""
    import importlib

    from gts_megatron.contracts.preflight import preflight

    if not in_launched_worker():
        if args.nproc_per_node < 1:
            raise GtsError(f"--nproc-per-node {args.nproc_per_node}: must be at least 1")
        preflight(cfg, args.nproc_per_node)  # refuse a bad run before spawning
        if args.nproc_per_node > 1:
            return launch_local(_worker_argv(args), args.nproc_per_node)
    module, name = _STAGES[args.command]
    result = getattr(importlib.import_module(module), name)(cfg, Path(args.run_dir))
    return 128 + result.interrupted_by if result.interrupted_by else 0


def pretrain_arguments(p: argparse.ArgumentParser) -> None:
    _run_arguments(p, "runs/pretrain")


def pretrain(args: argparse.Namespace, _options) -> int:
    cfg = load_config(args.config, args.set)
    if cfg.moe.plan:
        raise GtsError("moe.plan is set: pretrain builds the dense base model; use `gts train` for the MoE")
    return _run_training(args, cfg)


def train_arguments(p: argparse.ArgumentParser) -> None:
    _run_arguments(p, "runs/train")
    p.add_argument("--stage", choices=["group", "learned"], required=True,
                   help="group: stage 1, routed by language group; learned: stage 2, top-k router")


def train(args: argparse.Namespace, _options) -> int:
    from gts_megatron.contracts.preflight import check_moe

    cfg = load_config(args.config, [f"moe.stage={args.stage}", *args.set])
    check_moe(cfg)  # a GtS stage without its plan is refused before megatron loads
    return _run_training(args, cfg)


def experiment_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="run config YAML whose train section every arm uses (its model is the base's)")
    p.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                   help="override one config field, e.g. --set train.steps=200 (steps per arm)")
    p.add_argument("--run-dir", default="runs/experiment", help="arms, evaluations and results go here")


def experiment(args: argparse.Namespace, options) -> int:
    from gts_megatron.experiment import run_experiment, run_seeds

    (run_seeds if options.train_seeds else run_experiment)(options, load_config(args.config, args.set),
                                                            Path(args.run_dir))
    return 0


def adapt_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="results go to <run-dir>/adapt/<lang>")
    p.add_argument("--out", help="adaptation directory (overrides --run-dir)")


def adapt(args: argparse.Namespace, options) -> int:
    from gts_megatron.adapt import adapt as run_adapt

    run_adapt(options, Path(args.out or Path(args.run_dir) / "adapt" / options.lang))
    return 0
