"""A recipe -> its stages, in order, each one or more `gts` commands writing into
<run_dir>/<stage>. The commands are what a user would type; `gts run --dry-run` prints them and
the Slurm launcher submits them as they are."""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import yaml
from pydantic import BaseModel

from gts_megatron.config import RunConfig, load_config
from gts_megatron.config.commands import EvalWindows
from gts_megatron.config.recipe import Recipe
from gts_megatron.errors import GtsError
from gts_megatron.contracts.training import Arm, stage_config


@dataclass(frozen=True)
class Stage:
    """One stage of a run: what it is, the commands that do it, where they write, what they read.

    ``resumable``: its commands go on from what an interrupted attempt left (training, probes,
    token datasets); the others start again from nothing."""

    name: str
    about: str
    commands: tuple[tuple[str, ...], ...]
    output: Path
    after: tuple[str, ...]  # earlier stages whose outputs it reads
    reads: tuple[Path, ...] = ()  # files outside the run it reads (corpus, HF folder, config)
    resumable: bool = False


def option_flags(options: BaseModel, section: str) -> list[str]:
    """The --flags of the options a recipe section sets (those left out keep the command's defaults)."""
    flags = []
    for name, value in options.model_dump(exclude_unset=True).items():
        flag = "--" + name.replace("_", "-")
        default = type(options).model_fields[name].get_default(call_default_factory=True)
        if value == default:
            continue
        if isinstance(value, bool):
            flags += [flag] if value else ["--no-" + name.replace("_", "-")]
        elif value is None:
            raise GtsError(f"{section}.{name}: null cannot be passed on; give a value or leave the field out")
        elif isinstance(value, list):
            flags += [flag, ",".join(map(str, value))]
        else:
            flags += [flag, str(value)]
    return flags


def _override_value(value) -> str:
    """``value`` as the override parser (YAML) reads it back: plain when it can be, else JSON."""
    if isinstance(value, str) and yaml.safe_load(value) == value and not value.startswith(("'", '"')):
        return value
    return json.dumps(value)


def _sets(values: dict) -> list[str]:
    """``--set section.field=value`` for each item."""
    return [item for key, value in values.items() for item in ("--set", f"{key}={_override_value(value)}")]


class _Layout:
    """Where each stage of a recipe writes, and the run config of its training runs."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.run = Path(recipe.run_dir)
        self.data = Path(recipe.data) if recipe.data else self.run / "data"
        self.base = self.run / "base" if recipe.base.hf else self.run / "base" / "checkpoints"
        self.corpus = str(self.run / "corpus") if recipe.demo_corpus else recipe.corpus
        self.plan = self.run / "plan" / "plan.json"
        self.seeds = recipe.eval.train_seeds if recipe.eval else None  # GtS trained in the comparison
        trained = self.run / "experiment" / f"seed-{self.seeds[0]}" / "gts" if self.seeds else self.run
        self.final = trained / ("learned" if recipe.train.learned_steps else "group")
        self.config = recipe.config or (str(self.run / "base" / "config.yaml") if recipe.base.hf else None)
        self.languages = ["--languages", ",".join(recipe.languages)] if recipe.languages else []

    def run_data(self, steps: int) -> dict:
        """The overrides that point a training run at the recipe's data for ``steps`` steps."""
        data = {"data.kind": "indexed", "data.path": str(self.data), "train.steps": steps}
        if self.recipe.languages:
            data["data.languages"] = self.recipe.languages
        return data

    def overrides(self, gts: bool) -> list[str]:
        """The recipe's --set items of a training run: every run's, then (``gts``: a GtS or baseline
        run) train.set."""
        return [*self.recipe.set, *(self.recipe.train.set if gts else ())]

    def training(self, steps: int, gts: bool = True) -> RunConfig:
        """A training run's config, but for the model an imported base brings (its train and moe
        sections are what stages 1 and 2 derive theirs from)."""
        data = [f"{k}={_override_value(v)}" for k, v in self.run_data(steps).items()]
        # an imported model's section is not known before the import: let any sequence length
        # pass, as only the train and moe sections are read from this config
        model = ["model.max_seq_length=1000000"] if self.recipe.base.hf else []
        return load_config(self.recipe.config, [*self.overrides(gts), *data, *model])

    def recipe_args(self, gts: bool = True) -> list[str]:
        """--config and the recipe's own --set of a training run."""
        args = ["--config", self.config] if self.config else []
        for item in self.overrides(gts):
            args += ["--set", item]
        return args

    def training_args(self, steps: int, gts: bool = True) -> list[str]:
        """--config and --set of a training run (the recipe's, then the data's)."""
        return self.recipe_args(gts) + _sets(self.run_data(steps)) + [
            "--nproc-per-node", str(self.recipe.train.nproc_per_node)]

    def base_samples(self) -> int:
        """Training samples the base consumed: the GtS stages read the mixture from there on."""
        if self.recipe.base.hf:
            return 0
        steps = self.recipe.base.pretrain_steps
        return self.training(steps, gts=False).train.global_batch_size * steps


def _gts(*args: str) -> tuple[str, ...]:
    return ("gts", *args)


def _base_stages(at: _Layout) -> list[Stage]:
    recipe = at.recipe
    stages = []
    if recipe.base.hf:
        verify = [] if recipe.base.verify else ["--no-verify"]
        stages.append(Stage("import", f"import {recipe.base.hf}", (_gts("import-hf", recipe.base.hf, "--out",
                                                                         str(at.run / "base"), *verify),),
                            at.run / "base", (), (Path(recipe.base.hf),)))
    every = recipe.languages + (recipe.adapt.languages if recipe.adapt else []) if recipe.languages else None
    languages = ["--languages", ",".join(every)] if every else []
    if recipe.demo_corpus:
        stages.append(Stage("corpus", f"the demo corpus, {len(every)} languages", (_gts(
            "data", "demo-corpus", "--out", at.corpus, *languages),), Path(at.corpus), ()))
    if at.corpus:
        tokenizer = [] if recipe.prepare.tokenizer or not recipe.base.hf else [
            "--tokenizer", str(at.run / "base" / "hf" / "tokenizer.json")]
        after = ("import",) if recipe.base.hf else ("corpus",) if recipe.demo_corpus else ()
        stages.append(Stage("data", "tokenizer and per-language token datasets",
                            (_gts("data", "prepare", "--corpus", at.corpus, "--out", str(at.data), *languages,
                                  *tokenizer, *option_flags(recipe.prepare, "prepare")),),
                            at.data, after, () if recipe.demo_corpus else (Path(at.corpus),), resumable=True))
    if recipe.base.pretrain_steps:
        stages.append(Stage("base", f"dense base, {recipe.base.pretrain_steps} steps",
                            (_gts("pretrain", "--run-dir", str(at.run / "base"),
                                  *at.training_args(recipe.base.pretrain_steps, gts=False)),),
                            at.run / "base", ("data",) if at.corpus else (), _config_file(recipe),
                            resumable=True))
    return stages


def _config_file(recipe: Recipe) -> tuple[Path, ...]:
    return (Path(recipe.config),) if recipe.config else ()


def _method_stages(at: _Layout) -> list[Stage]:
    recipe = at.recipe
    base_stage = "import" if recipe.base.hf else "base"
    data_stage = ("data",) if at.corpus else ()
    probes, plan_dir = at.run / "probes", at.run / "plan"
    stages = [
        Stage("probe", "a short fine-tune per language", (_gts(
            "probe", "--base", str(at.base), "--data", str(at.data), "--out", str(probes), *at.languages,
            *option_flags(recipe.probe, "probe")),), probes, (base_stage, *data_stage), resumable=True),
        Stage("plan", f"similarity, {recipe.plan.k} groups, MoE layers", (_gts(
            "plan", "--probes", str(probes), "--out", str(plan_dir), *at.languages,
            *option_flags(recipe.plan, "plan")),), plan_dir, ("probe",),
            (Path(recipe.plan.groups_map),) if recipe.plan.groups_map else ()),
    ]
    if not at.seeds:  # else each GtS arm of the comparison expands its own
        moments = ["--optimizer-state"] if at.training(recipe.train.steps).train.init_optimizer else []
        stages.append(Stage("expand", "the dense base as the planned MoE model", (_gts(
            "expand", "--dense", str(at.base), "--plan", str(at.plan), "--out", str(at.run / "moe"), *moments),),
            at.run / "moe", (base_stage, "plan")))
    return stages


def _training_stages(at: _Layout) -> list[Stage]:
    """Stage 1 and 2 follow one learning-rate schedule over train.steps and read the mixture on
    from where the base stopped, as `gts experiment` trains its GtS arm."""
    recipe = at.recipe
    if at.seeds:
        return []
    total, learned = recipe.train.steps, recipe.train.learned_steps
    base_cfg, base_samples = at.training(total), at.base_samples()
    stages, init, previous = [], at.run / "moe", "expand"
    for stage, steps in (("group", total - learned), ("learned", learned)):
        if not steps:
            continue
        cfg = stage_config(base_cfg, Arm("gts", at.plan, learned, base_samples), stage, init)
        changed = {f"train.{k}": getattr(cfg.train, k) for k in ("init_from", "data_offset", "lr", "warmup_steps",
                                                                 "lr_decay_steps")
                   if getattr(cfg.train, k) != getattr(base_cfg.train, k)}
        args = at.training_args(steps) + _sets({"moe.plan": str(at.plan), **changed})
        what = "stage 1, group routing" if stage == "group" else "stage 2, learned routing"
        stages.append(Stage(stage, f"{what}, {steps} steps",
                            (_gts("train", "--stage", stage, "--run-dir", str(at.run / stage), *args),),
                            at.run / stage, (previous, "plan", *(("data",) if at.corpus else ())),
                            _config_file(recipe), resumable=True))
        init, previous = at.run / stage / "checkpoints", stage
    return stages


def _eval_flags(recipe: Recipe) -> list[str]:
    """The evaluation windows' flags (eval, baselines and adapt score text alike)."""
    if recipe.eval is None:
        return []
    windows = recipe.eval.model_dump(include=set(EvalWindows.model_fields), exclude_unset=True)
    return option_flags(EvalWindows(**windows), "eval")


def _comparison_stage(at: _Layout, arms: list[str], seeds: Optional[list[int]], name: str, about: str) -> Stage:
    """`gts experiment` of ``arms`` on the recipe's data and plan, once (or once per seed)."""
    recipe = at.recipe
    seeds_flag = ["--train-seeds", ",".join(map(str, seeds))] if seeds else []
    return Stage(name, about, (_gts(
        "experiment", "--base", str(at.base), "--data", str(at.data), "--plan", str(at.plan),
        "--arms", ",".join(arms), "--learned-steps", str(recipe.train.learned_steps), *seeds_flag,
        "--run-dir", str(at.run / name), *_eval_flags(recipe), *at.recipe_args(),
        *_sets(at.run_data(recipe.train.steps))),),
        at.run / name, ("plan", *(("data",) if at.corpus else ())), _config_file(recipe), resumable=True)


def _evaluation_stages(at: _Layout) -> list[Stage]:
    """The GtS model's held-out perplexity and the baselines' on the same tokens; with train seeds,
    one comparison that also trains GtS once per seed."""
    recipe, data_stage = at.recipe, ("data",) if at.corpus else ()
    if recipe.eval is None:
        return []
    if at.seeds:
        arms = [arm for arm in ("dense", "gts", "random") if arm == "gts" or arm in recipe.eval.baselines]
        return [_comparison_stage(at, arms, at.seeds, "experiment", f"{', '.join(arms)} at equal tokens, "
                                  f"{recipe.train.steps} steps each, seeds {', '.join(map(str, at.seeds))}")]
    languages = recipe.eval.languages or recipe.languages
    chosen = ["--languages", ",".join(languages)] if languages else []
    stages = [Stage("eval", "held-out perplexity per language", (_gts(
        "eval", "--checkpoint", str(at.final / "checkpoints"), "--data", str(at.data),
        "--out", str(at.run / "eval" / "gts.json"), *chosen, *_eval_flags(recipe)),),
        at.run / "eval", (at.final.name, *data_stage))]
    if recipe.eval.baselines:
        stages.append(_comparison_stage(at, recipe.eval.baselines, None, "baselines",
                                        f"{', '.join(recipe.eval.baselines)} on the same tokens"))
    return stages


def _closing_stages(at: _Layout) -> list[Stage]:
    recipe, final = at.recipe, at.final / "checkpoints"
    trained = "experiment" if at.seeds else at.final.name  # the stage that trains the final model
    stages = []
    data_stage = ("data",) if at.corpus else ()
    if recipe.adapt is not None:
        seq = str(at.training(recipe.train.steps).train.seq_length)
        stages.append(Stage("adapt", f"{', '.join(recipe.adapt.languages)} as new expert{'s' if len(recipe.adapt.languages) > 1 else ''}", tuple(_gts(
            "adapt", "--checkpoint", str(final), "--lang", lang, "--data", str(at.data),
            "--out", str(at.run / "adapt" / lang), "--steps", str(recipe.adapt.steps), "--lr", str(recipe.adapt.lr),
            "--seq-length", seq, *_eval_flags(recipe)) for lang in recipe.adapt.languages),
            at.run / "adapt", (trained, *data_stage), resumable=True))
    if recipe.export_hf is not None:
        arch = ["--architecture", recipe.export_hf.architecture] if recipe.export_hf.architecture else []
        if recipe.base.hf:  # the imported tokenizer goes along: the folder is then ready to use
            arch += ["--tokenizer-dir", str(at.run / "base" / "hf")]
        stages.append(Stage("export", "a Hugging Face folder of the GtS model", (_gts(
            "export-hf", str(final), "--out", str(at.run / "hf"), *arch),), at.run / "hf", (trained,)))
    if recipe.mechanism is not None:
        stages.append(Stage("mechanism", f"the same on {recipe.mechanism.families} planted families that interfere",
                            (_gts("mechanism", "--out", str(at.run / "mechanism"),
                                  *option_flags(recipe.mechanism, "mechanism")),), at.run / "mechanism", ()))
    if recipe.report is not None:
        done = [s.name for s in stages if s.name in ("adapt", "mechanism")]
        note = ["--note", recipe.report.note] if recipe.report.note else []
        stages.append(Stage("report", "report.md with figures", (_gts(
            "report", "--run-dir", str(at.run), "--title", recipe.report.title, *note),),
            at.run / "report.md", (*data_stage, "plan", "experiment", *done)))
    return stages


def recipe_stages(recipe: Recipe) -> list[Stage]:
    """Every stage of ``recipe``, in the order they run."""
    at = _Layout(recipe)
    stages = (_base_stages(at) + _method_stages(at) + _training_stages(at) + _evaluation_stages(at)
              + _closing_stages(at))
    if recipe.data:  # data prepared elsewhere: its files are an input of every stage that reads them
        stages = [replace(s, reads=s.reads + (at.data,)) if any(str(at.data) in arg for c in s.commands for arg in c) else s
                  for s in stages]
    return stages


def stage_named(stages: list[Stage], name: Optional[str], flag: str = "--from") -> Optional[Stage]:
    """The stage called ``name`` (None for None), or a one-line error naming ``flag`` and the valid names."""
    if name is None:
        return None
    for stage in stages:
        if stage.name == name:
            return stage
    raise GtsError(f"{flag} {name}: no such stage in this recipe (or not before --to); its stages: "
                   f"{', '.join(s.name for s in stages)}")
