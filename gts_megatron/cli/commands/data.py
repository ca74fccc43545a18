"""`gts data demo-corpus`, `data prepare` and `data synthetic`."""
from __future__ import annotations

import argparse
from pathlib import Path

from gts_megatron.cli.flags import comma_list
from gts_megatron.config import PrepareConfig
from gts_megatron.data.demo_corpus import build_demo_corpus
from gts_megatron.data.families import write_synthetic
from gts_megatron.data.prepare import prepare as run_prepare


def _output_arguments(p: argparse.ArgumentParser, run_dir: str, what: str, sub: str) -> None:
    p.add_argument("--run-dir", default=run_dir, help=f"the {what} goes to <run-dir>/{sub}")
    p.add_argument("--out", help=f"{what} directory (overrides --run-dir)")


def demo_corpus_arguments(p: argparse.ArgumentParser) -> None:
    _output_arguments(p, "runs/demo", "corpus", "corpus")
    p.add_argument("--languages", type=comma_list, help="comma-separated subset, e.g. en,fr,ru")
    p.add_argument("--include-restricted", action="store_true",
                   help="also the 10 languages whose only text is marked copyrighted (22 in all)")
    p.add_argument("--with-debian", action="store_true",
                   help="add Battle for Wesnoth translations from Debian packages (apt-get download; 40+ languages)")


def demo_corpus(args: argparse.Namespace, _options) -> int:
    build_demo_corpus(Path(args.out or Path(args.run_dir) / "corpus"), args.languages, args.include_restricted,
                      with_debian=args.with_debian)
    return 0


def prepare_arguments(p: argparse.ArgumentParser) -> None:
    _output_arguments(p, "runs/demo", "data", "data")
    p.add_argument("--force", action="store_true", help="replace an existing data directory built otherwise")
    p.add_argument("--corpus", required=True, help=PrepareConfig.model_fields["corpus"].description)
    p.add_argument("--skip-bad-lines", action="store_true", default=None,
                   help=PrepareConfig.model_fields["skip_bad_lines"].description)


def prepare(args: argparse.Namespace, options) -> int:
    run_prepare(options, Path(args.out or Path(args.run_dir) / "data"), force=args.force)
    return 0


def synthetic_arguments(p: argparse.ArgumentParser) -> None:
    _output_arguments(p, "runs/synthetic", "data", "data")


def synthetic(args: argparse.Namespace, options) -> int:
    write_synthetic(options, Path(args.out or Path(args.run_dir) / "data"))
    return 0
