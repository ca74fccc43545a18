"""`gts bench data|train|dispatch|probes|stability|plan`: speed and stability, measured against a
baseline of the same run."""
from __future__ import annotations

import argparse
from pathlib import Path

from gts_megatron.cli.flags import int_list


def _positive_ints(value: str) -> list[int]:
    numbers = int_list(value)
    if not numbers or min(numbers) < 1:
        raise argparse.ArgumentTypeError(f"{value!r}: give positive integers, e.g. 2048,4096")
    return numbers


def _work_dir(args: argparse.Namespace):
    return Path(args.work_dir) if args.work_dir else None


def data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--work-dir", help="where to put the temporary corpus (default: the system temp dir)")
    p.add_argument("--include-restricted", action="store_true", help="all 22 languages")


def data(args: argparse.Namespace, _options) -> int:
    from gts_megatron.bench.data import bench_data, report

    print(report(bench_data(_work_dir(args), args.include_restricted)))
    return 0


def train_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workspace", help=argparse.SUPPRESS)  # set by the launcher for its workers


def train(args: argparse.Namespace, options) -> int:
    if args.workspace:  # a launched worker of the benchmark below
        from gts_megatron.bench.train.worker import run_worker

        run_worker(Path(args.workspace))
        return 0
    from gts_megatron.bench.train import bench_train
    from gts_megatron.bench.train.report import report

    print(report(bench_train(options, log=lambda line: print(line, flush=True))))
    return 0


def dispatch_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--hidden", type=_positive_ints, default=[2048, 4096, 8192], help="hidden sizes (comma-separated)")
    p.add_argument("--tokens", type=_positive_ints, default=[4096, 16384, 65536],
                   help="token counts (comma-separated)")
    p.add_argument("--groups", type=int, default=8, help="language groups (experts)")
    p.add_argument("--dtype", choices=["bf16", "fp16", "fp32"], default="bf16")
    p.add_argument("--repeats", type=int, default=5, help="timed round trips per method and size")
    p.add_argument("--device", default="auto", help="auto (cuda when there is one), cpu or cuda")


def dispatch(args: argparse.Namespace, _options) -> int:
    from gts_megatron.bench.dispatch import bench_dispatch, report

    print(report(bench_dispatch(args.hidden, args.tokens, args.groups, args.dtype, args.repeats, args.device)))
    return 0


def probes_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="small", help="model preset (default small)")
    p.add_argument("--languages", type=int, default=4)
    p.add_argument("--steps", type=int, default=10, help="steps per probe")
    p.add_argument("--seq-length", type=int, default=256)
    p.add_argument("--cpus-per-probe", type=int, default=1)
    p.add_argument("--work-dir", help="where to put the temporary runs")


def probes(args: argparse.Namespace, _options) -> int:
    from gts_megatron.bench.probes import bench_probes, report

    print(report(bench_probes(args.preset, args.languages, args.steps, args.seq_length, args.cpus_per_probe,
                              _work_dir(args))))
    return 0


def stability_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--seeds", type=_positive_ints, default=[1, 2, 3], help="probe seeds (comma-separated)")
    p.add_argument("--k", type=int, default=4, help="groups")
    p.add_argument("--out", default="runs/stability", help="one probe store per seed, and stability.json")


def stability(args: argparse.Namespace, options) -> int:
    from gts_megatron.bench.stability import probe_stability, report

    print(report(probe_stability(options, args.seeds, args.k, Path(args.out))))
    return 0


def plan_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--languages", type=int, default=128)
    p.add_argument("--groups", type=int, default=16)
    p.add_argument("--sketch-size", type=int, default=4096, help="sketch length per layer")
    p.add_argument("--figures", action="store_true", help="also draw the PNG figures")
    p.add_argument("--work-dir", help="where to put the temporary probe store")


def plan(args: argparse.Namespace, _options) -> int:
    from gts_megatron.bench.plan import bench_plan, report

    print(report(bench_plan(args.languages, args.groups, args.sketch_size, args.figures, _work_dir(args))))
    return 0
