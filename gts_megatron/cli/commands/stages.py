"""`gts probe`, `plan`, `expand` and `eval`: the method's stages that do not train a model."""
from __future__ import annotations

import argparse
from pathlib import Path

from gts_megatron.config import ExpandConfig
from gts_megatron.contracts.plan import changed_inputs, load_plan
from gts_megatron.errors import GtsError
from gts_megatron.plan.make import make_plan


def probe_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="results go to <run-dir>/probes")
    p.add_argument("--out", help="probe store directory (overrides --run-dir)")


def probe(args: argparse.Namespace, options) -> int:
    from gts_megatron.probe.fleet import run_fleet

    out = Path(args.out or Path(args.run_dir) / "probes")
    status = run_fleet(options, out)
    print(f"{sum(s == 'done' for s in status.values())} probed, {sum(s == 'skipped' for s in status.values())} "
          f"already there; results in {out}")
    return 0


def plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/demo", help="the plan goes to <run-dir>/plan")
    p.add_argument("--out", help="plan directory (overrides --run-dir)")
    p.add_argument("--no-plots", dest="plots", action="store_false", default=None, help="numbers only, no PNG")


def plan(args: argparse.Namespace, options) -> int:
    out = Path(args.out or Path(args.run_dir) / "plan")
    make_plan(options, out)
    print(f"wrote {out / 'plan.json'} and its figures")
    return 0


def expand_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dense", required=True, help="dense checkpoint (or a checkpoints directory: its latest)")
    p.add_argument("--plan", required=True, help="plan.json")
    p.add_argument("--run-dir", default="runs/demo", help="the MoE checkpoint goes to <run-dir>/moe")
    p.add_argument("--out", help="checkpoint directory (overrides --run-dir)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the routers' initialisation")
    p.add_argument("--force", action="store_true",
                   help="expand even if the probe results the plan was made from have changed since")
    p.add_argument("--optimizer-state", action="store_true",
                   help="also expand the dense run's Adam moments (each expert continues its MLP's), for training "
                        "that continues them with train.init_optimizer=true")


def expand(args: argparse.Namespace, _options) -> int:
    from gts_megatron.expand import expand as run_expand

    changed = [] if args.force else changed_inputs(load_plan(Path(args.plan)))
    if changed:
        raise GtsError(f"{args.plan}: {len(changed)} of its input files changed since it was made (e.g. {changed[0]}); "
                       f"run `gts plan` again, or pass --force to expand with it as it is")

    run_expand(Path(args.dense), Path(args.plan), Path(args.out or Path(args.run_dir) / "moe"),
               ExpandConfig(seed=args.seed, optimizer_state=args.optimizer_state))
    return 0


def evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", default="runs/eval", help="the result goes to <run-dir>/eval-<split>.json")
    p.add_argument("--out", help="result JSON (overrides --run-dir)")


def evaluate(args: argparse.Namespace, options) -> int:
    from gts_megatron.eval import evaluate_checkpoint

    out = Path(args.out or Path(args.run_dir) / f"eval-{options.split}.json")
    evaluate_checkpoint(options, out)
    print(f"wrote {out}")
    return 0
