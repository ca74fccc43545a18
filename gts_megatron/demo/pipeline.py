"""`gts demo`: the packaged demo recipe, run here with `gts run`'s runner.

corpus -> tokenizer and token datasets -> dense base -> probe fleet (local Ray) -> plan ->
experiment (dense continued training, GtS stage 1 then stage 2, random groups, all at equal
tokens, over several training seeds, evaluated per language) -> adaptation to a held-out
language -> the mechanism check (the same method on planted families that interfere) -> report.md.

The recipes are ``configs/recipes/demo-quick.yaml``, ``demo.yaml`` and ``demo-full.yaml``;
`gts run demo` runs the same stages. Every stage keeps a record in ``<run>/stages``, so an
interrupted demo goes on where it stopped when run again.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Optional

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.errors import GtsError
from gts_megatron.recipe import open_recipe, run_recipe

RECIPES = {"quick": "demo-quick", "default": "demo", "full": "demo-full"}
RUN_DIRS = {"quick": "runs/demo-quick", "default": "runs/demo", "full": "runs/demo-full"}
FLAGS = {"quick": "--quick", "full": "--full", "default": "the default"}
STATE_FILE = "demo.json"  # which demo size the run directory holds


def run_demo(mode: str = "default", run_dir: Optional[Path] = None, log: Callable = print) -> Path:
    """Run (or resume) the demo of size ``mode`` (quick, default or full) in ``run_dir`` (by
    default ``RUN_DIRS[mode]``); returns the report's path."""
    run_dir = Path(run_dir or RUN_DIRS[mode])
    state_path = run_dir / STATE_FILE
    was = json.loads(state_path.read_text()).get("mode") if state_path.is_file() else mode
    if was != mode:
        raise GtsError(f"{run_dir} holds a demo run with {FLAGS.get(was, was)}; use another --run-dir "
                       f"(the defaults are {', '.join(RUN_DIRS.values())})")
    recipe = open_recipe(RECIPES[mode], run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_path, json.dumps({"mode": mode, "recipe": RECIPES[mode]}) + "\n")
    run_recipe(recipe, log=log)
    log(f"demo done; report: {run_dir / 'report.md'}")
    return run_dir / "report.md"
