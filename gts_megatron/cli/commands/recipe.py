"""`gts run RECIPE` and `gts run status RECIPE`."""
from __future__ import annotations

import argparse

from gts_megatron.errors import GtsError
from gts_megatron.recipe import (dry_run, open_recipe, recipe_status, recipe_text, run_recipe, run_single_stage,
                                 submit_recipe)


def run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML (see `gts config show --recipe`), or a packaged recipe's name; "
                                  "`gts run status RECIPE` shows where its run stands")
    p.add_argument("status_of", nargs="?", metavar="RECIPE", help=argparse.SUPPRESS)
    p.add_argument("--from", dest="start_from", metavar="STAGE", help="run again from this stage on")
    p.add_argument("--to", dest="stop_at", metavar="STAGE", help="stop after this stage")
    p.add_argument("--launcher", choices=["local", "slurm"], default="local",
                   help="local: the stages one after another here; slurm: a job per stage, chained with afterok "
                        "(resources from the recipe's slurm section)")
    p.add_argument("--stage", metavar="STAGE", help="run this one stage (what each Slurm job of a chain runs)")
    p.add_argument("--address", help="with --stage probe: the Ray cluster to probe on (the Ray job passes it)")
    p.add_argument("--dry-run", action="store_true", help="print the stages and their commands, run nothing")
    p.add_argument("--show", action="store_true",
                   help="print the recipe's YAML (a packaged one, to copy and fill in: gts run hf-model --show)")


def run(args: argparse.Namespace, _options) -> int:
    from pathlib import Path


    if args.recipe == "status":
        if args.status_of is None:
            raise GtsError("gts run status RECIPE: name the recipe")
        print(recipe_status(open_recipe(args.status_of)))
        return 0
    if args.status_of is not None:
        raise GtsError(f"gts run {args.recipe} {args.status_of}: give one recipe (or `gts run status RECIPE`)")
    if args.show:
        print(recipe_text(args.recipe), end="")
        return 0
    recipe = open_recipe(args.recipe)
    if args.address and not args.stage:
        raise GtsError("--address goes with --stage probe (a Ray job's probe stage)")
    if args.stage:
        run_single_stage(recipe, args.stage, args.address)
        return 0
    if args.dry_run:
        print(dry_run(recipe, args.start_from, args.stop_at))
        return 0
    log = lambda line: print(line, flush=True)  # noqa: E731 - prompt in pipes and logs
    if args.launcher == "slurm":
        ref = str(Path(args.recipe).resolve()) if Path(args.recipe).is_file() else args.recipe
        jobs = submit_recipe(recipe, ref, args.start_from, args.stop_at, log=log)
        print(f"submitted {len(jobs)} job(s); `gts run status {args.recipe}` shows where they are")
        return 0
    run_recipe(recipe, args.start_from, args.stop_at, log=log)
    return 0
