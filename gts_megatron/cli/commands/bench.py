"""`gts bench data|train|dispatch|probes|stability|plan`: speed and stability, measured against a
baseline of the same run; `gts bench layout`: a cluster layout, computed."""
from __future__ import annotations

import argparse
from pathlib import Path

from gts_megatron.bench.data import bench_data, report as data_report
from gts_megatron.bench.layout import bench_layout, report as layout_report
from gts_megatron.bench.plan import bench_plan, report as plan_report
from gts_megatron.bench.probes import bench_probes, report as probes_report
from gts_megatron.bench.stability import probe_stability, report as stability_report
from gts_megatron.bench.train import bench_train


def _work_dir(args: argparse.Namespace):
    return Path(args.work_dir) if args.work_dir else None


def data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", help="where to put the temporary corpus (default: the system temp dir)")
    p.add_argument("--include-restricted", action="store_true", help="all 22 languages")


def data(args: argparse.Namespace, _options) -> int:
    print(data_report(bench_data(_work_dir(args), args.include_restricted)))
    return 0


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", help=argparse.SUPPRESS)  # set by the launcher for its workers


def train(args: argparse.Namespace, options) -> int:
    if args.workspace:  # a launched worker of the benchmark below
        from gts_megatron.bench.train.worker import run_worker

        run_worker(Path(args.workspace))
        return 0
    from gts_megatron.bench.train.report import report

    print(report(bench_train(options, log=lambda line: print(line, flush=True))))
    return 0


def dispatch(_args: argparse.Namespace, options) -> int:
    from gts_megatron.bench.dispatch import bench_dispatch, report

    print(report(bench_dispatch(options)))
    return 0


def probes(_args: argparse.Namespace, options) -> int:
    print(probes_report(bench_probes(options)))
    return 0


def stability(_args: argparse.Namespace, options) -> int:
    print(stability_report(probe_stability(options)))
    return 0


def plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--languages", type=int, default=128)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--sketch-size", type=int, default=4096, help="sketch length per layer")
    p.add_argument("--figures", action="store_true", help="also draw the PNG figures")
    p.add_argument("--work-dir", help="where to put the temporary probe store")


def plan(args: argparse.Namespace, _options) -> int:
    print(plan_report(bench_plan(args.languages, args.groups, args.sketch_size, args.figures, _work_dir(args))))
    return 0


def layout(_args: argparse.Namespace, options) -> int:
    print(layout_report(bench_layout(options)))
    return 0
