"""`gts demo`, `gts mechanism` and `gts report`: the demo recipe, its mechanism check and its report."""
from __future__ import annotations

import argparse
from pathlib import Path

from gts_megatron.demo import run_demo
from gts_megatron.demo.mechanism import run_mechanism
from gts_megatron.demo.report import update_readme, write_report


def demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", help="where everything goes (default runs/demo, runs/demo-quick or runs/demo-full)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true",
                      help="6 languages and a few steps per stage: a pipeline check (about 3 minutes)")
    size.add_argument("--full", action="store_true",
                      help="probes of 4,096 tokens per step, 150 steps per arm, 3 training seeds (15-18 "
                           "minutes on 2 cores)")
    p.add_argument("--readme", help="also write the report's results section into this README")


def demo(args: argparse.Namespace, _options) -> int:
    mode = "quick" if args.quick else "full" if args.full else "default"
    report = run_demo(mode, Path(args.run_dir) if args.run_dir else None,
                      log=lambda line: print(line, flush=True))  # prompt in pipes and logs
    if args.readme:
        update_readme(Path(args.readme), report)
        print(f"updated the results section of {args.readme}")
    return 0


def mechanism_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="where its data, base, probes, plan and arms go")


def mechanism(args: argparse.Namespace, options) -> int:
    run_mechanism(Path(args.out), options)
    return 0


def report_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run-dir", required=True, help="a recipe's run directory whose comparison ran over seeds")
    p.add_argument("--title", default="GtS report", help="the report's heading")
    p.add_argument("--note", default="", help="a paragraph under the heading")


def report(args: argparse.Namespace, _options) -> int:
    write_report(Path(args.run_dir), args.title, args.note)
    return 0
