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

from gts_megatron.artifacts import atomic_write_text, read_json
from gts_megatron.errors import GtsError
from gts_megatron.recipe import open_recipe, run_recipe

# demo size -> (packaged recipe, default run directory, the flag that chooses it)
SIZES = {"quick": ("demo-quick", "runs/demo-quick", "--quick"),
         "default": ("demo", "runs/demo", "the default"),
         "full": ("demo-full", "runs/demo-full", "--full")}
RECIPES = {mode: recipe for mode, (recipe, _, _) in SIZES.items()}
STATE_FILE = "demo.json"  # which demo size the run directory holds


def run_demo(mode: str = "default", run_dir: Optional[Path] = None, log: Callable = print) -> Path:
    """Run (or resume) the demo of size ``mode`` (quick, default or full) in ``run_dir`` (by
    default the size's own); returns the report's path."""
    recipe_name, default_dir, _ = SIZES[mode]
    run_dir = Path(run_dir or default_dir)
    state_path = run_dir / STATE_FILE
    was = read_json(state_path).get("mode") if state_path.is_file() else mode
    if was != mode:
        flag = SIZES[was][2] if was in SIZES else was
        raise GtsError(f"{run_dir} holds a demo run with {flag}; use another --run-dir "
                       f"(the defaults are {', '.join(d for _, d, _ in SIZES.values())})")
    recipe = open_recipe(recipe_name, run_dir=run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(state_path, json.dumps({"mode": mode, "recipe": recipe_name}) + "\n")
    run_recipe(recipe, log=log)
    log(f"demo done; report: {run_dir / 'report.md'}")
    return run_dir / "report.md"
