"""`gts run`: a recipe (one YAML) runs the whole method, stage by stage, and resumes.

- :mod:`.stages`: a recipe -> its stages, each the `gts` commands a user would type;
- :mod:`.runner`: runs them in order with a record per stage (skip what is done, resume what
  was interrupted, rerun what changed) and reports where a run stands;
- :mod:`.slurm`: the same stages as a chain of Slurm jobs (afterok), one per stage.
"""
from __future__ import annotations

import shlex
from importlib import resources
from pathlib import Path
from typing import Callable, Optional

from gts_megatron.config.recipe import Recipe, load_recipe
from gts_megatron.data.manifest import load_manifest
from gts_megatron.errors import GtsError
from gts_megatron.recipe.runner import format_status, run_one_stage, run_stages, submit_stages
from gts_megatron.recipe.stages import Stage, recipe_stages, stage_named


def packaged_recipes() -> list[str]:
    """Names of the recipes shipped with the package (``gts run NAME``)."""
    root = resources.files("gts_megatron") / "configs" / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".yaml"))


def _recipe_file(name: str) -> tuple[Path, bool]:
    """(the file, whether it is packaged) that ``name`` names: a path, else a packaged recipe."""
    path = Path(name)
    if path.is_file():
        return path, False
    if name in packaged_recipes():
        return Path(str(resources.files("gts_megatron") / "configs" / "recipes" / f"{name}.yaml")), True
    raise GtsError(f"recipe {name} does not exist; give a YAML file or one of: {', '.join(packaged_recipes())}")


def recipe_text(name: str) -> str:
    """The YAML of the recipe ``name`` names, as written."""
    return _recipe_file(name)[0].read_text(encoding="utf-8")


def open_recipe(name: str, run_dir: Optional[Path] = None) -> Recipe:
    """The recipe file ``name``, or the packaged recipe of that name (its paths then relative to the
    current folder), validated, its paths absolute; ``run_dir`` replaces its run directory."""
    path, packaged = _recipe_file(name)
    return load_recipe(path, relative_to=Path.cwd() if packaged else None, run_dir=run_dir)


def selected_stages(recipe: Recipe, start_from: Optional[str] = None, stop_at: Optional[str] = None) -> list[Stage]:
    """The recipe's stages up to ``stop_at`` (all by default), ``start_from`` checked to be among them."""
    stages = recipe_stages(recipe)
    last = stage_named(stages, stop_at, "--to")
    stages = stages[:stages.index(last) + 1] if last else stages
    stage_named(stages, start_from, "--from")
    return stages


def dry_run(recipe: Recipe, start_from: Optional[str] = None, stop_at: Optional[str] = None) -> str:
    """The stages and their commands, as `gts run` would run them."""
    stages = selected_stages(recipe, start_from, stop_at)
    lines = []
    for number, stage in enumerate(stages, 1):
        lines.append(f"# [{number}/{len(stages)}] {stage.name}: {stage.about} -> {stage.output}")
        lines += [shlex.join(command) for command in stage.commands]
    return "\n".join(lines)


def run_recipe(recipe: Recipe, start_from: Optional[str] = None, stop_at: Optional[str] = None,
               log: Callable[[str], None] = print) -> None:
    """Run ``recipe``'s stages here, one after another (see :mod:`.runner`)."""
    run_stages(Path(recipe.run_dir), selected_stages(recipe, start_from, stop_at), start_from, log)


def submit_recipe(recipe: Recipe, recipe_ref: str, start_from: Optional[str] = None, stop_at: Optional[str] = None,
                  log: Callable[[str], None] = print) -> list[str]:
    """Submit ``recipe``'s stages as a chain of Slurm jobs, each running `gts run <recipe_ref> --stage`."""
    options = recipe.slurm.model_dump(exclude_unset=True) if recipe.slurm else {}
    if options.get("probe_array"):  # one array task per GtS language
        options["probe_languages"] = recipe.languages or load_manifest(Path(recipe.data)).languages
    return submit_stages(Path(recipe.run_dir), selected_stages(recipe, start_from, stop_at), start_from,
                         recipe_ref, options, log)


def run_single_stage(recipe: Recipe, name: str, address: Optional[str] = None) -> None:
    """Run one stage of ``recipe`` (what each Slurm job of a chain runs); the probe stage on the
    Ray cluster at ``address`` when given."""
    stages = recipe_stages(recipe)
    stage_named(stages, name, "--stage")
    if address is not None and name != "probe":
        raise GtsError(f"--address: only the probe stage runs on a Ray cluster, not {name}")
    run_one_stage(Path(recipe.run_dir), stages, name, ("--address", address) if address else ())


def recipe_status(recipe: Recipe) -> str:
    """Each stage's state, time and output."""
    return format_status(Path(recipe.run_dir), recipe_stages(recipe))
