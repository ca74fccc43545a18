"""`gts demo`: the whole method on the embedded corpus, one stage after another, in one process.

corpus -> tokenizer and token datasets -> dense base -> probe fleet (local Ray) -> plan ->
experiment (dense continued training, GtS stage 1 then stage 2, random groups, all at equal
tokens, over several training seeds, evaluated per language) -> adaptation to a held-out
language -> the mechanism check (the same method on planted families that interfere) -> report.md.

Every stage keeps its results on disk and skips or resumes what is done, so an interrupted demo
goes on where it stopped when run again. ``demo.json`` records each stage's wall time.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Callable

from gts_megatron.artifacts import atomic_write_text
from gts_megatron.demo.mechanism import MechanismRecipe, run_mechanism
from gts_megatron.errors import Interrupted


@dataclass(frozen=True)
class DemoRecipe:
    """What the demo runs: its languages, how long each stage trains, how much text it scores."""

    languages: tuple[str, ...]  # every corpus language; all but new_language are the GtS languages
    new_language: str           # held out of base, probes and GtS: the adaptation target
    groups: int
    base_steps: int
    probe_steps: int
    arm_steps: int
    learned_steps: int
    adapt_steps: int
    max_eval_tokens: int
    probe_tokens_per_step: int  # gradient probes: steps x this many tokens per language
    train_seeds: tuple[int, ...]  # every arm once per seed
    mechanism: MechanismRecipe
    overrides: tuple[str, ...] = ()  # run-config overrides for every training run
    prepare: dict = field(default_factory=dict)  # PrepareConfig fields

    @property
    def gts_languages(self) -> list[str]:
        return [lang for lang in self.languages if lang != self.new_language]


# `gts demo --full`: probes of 4,096 tokens per step, arms of 150 steps, 3 training seeds (the
# README's results); `gts demo`: the same stages at 2,048, 100 steps and 2 seeds, in about 15 minutes
FULL = DemoRecipe(languages=("ar", "de", "en", "es", "fa", "fr", "it", "ko", "pt", "ru", "tl", "vi"),
                  new_language="pt", groups=4, base_steps=400, probe_steps=10, arm_steps=150, learned_steps=40,
                  adapt_steps=100, max_eval_tokens=4096, probe_tokens_per_step=4096, train_seeds=(1, 2, 3),
                  mechanism=MechanismRecipe())
DEFAULT = replace(FULL, probe_tokens_per_step=2048, arm_steps=100, learned_steps=25,
                  train_seeds=(1, 2), max_eval_tokens=2048,
                  mechanism=MechanismRecipe(arm_steps=150, learned_steps=40, train_seeds=(1, 2)))
QUICK = DemoRecipe(languages=("de", "en", "es", "fr", "pt", "ru"), new_language="pt", groups=2, base_steps=30,
                   probe_steps=3, arm_steps=16, learned_steps=4, adapt_steps=8, max_eval_tokens=384,
                   probe_tokens_per_step=512, train_seeds=(1, 2),
                   mechanism=MechanismRecipe(languages=4, families=2, documents=60, base_steps=20, arm_steps=24,
                                             learned_steps=8, train_seeds=(1, 2), max_eval_tokens=512),
                   overrides=("model.vocab_size=1000", "train.seq_length=64"),
                   prepare={"vocab_size": 1000, "sample_characters": 1_000_000})
RECIPES = {"quick": QUICK, "default": DEFAULT, "full": FULL}

STATE_FILE = "demo.json"


def _config(run_dir: Path, recipe: DemoRecipe, extra: list[str]):
    from gts_megatron.config import load_config

    path = resources.files("gts_megatron") / "configs" / "demo.yaml"
    languages = json.dumps(recipe.gts_languages)
    return load_config(str(path), [f"data.path={run_dir / 'data'}", f"data.languages={languages}",
                                   *recipe.overrides, *extra])


def demo_stages(run_dir: Path, recipe: DemoRecipe, log: Callable) -> list[tuple[str, str, Callable[[], None]]]:
    """(name, what it does, run it) for every stage, in order."""
    from gts_megatron.config import (AdaptConfig, ExperimentConfig, PlanConfig, PrepareConfig, ProbeConfig)

    data, base, plan = run_dir / "data", run_dir / "base", run_dir / "plan" / "plan.json"
    windows = {"max_tokens": recipe.max_eval_tokens, "window": None, "stride": None}
    langs = recipe.gts_languages
    seq = _config(run_dir, recipe, []).train.seq_length  # every run's sequence length

    def corpus():
        from gts_megatron.data.demo_corpus import build_demo_corpus
        build_demo_corpus(run_dir / "corpus", list(recipe.languages), log=log)

    def tokens():
        from gts_megatron.data.prepare import prepare
        prepare(PrepareConfig(corpus=str(run_dir / "corpus"), **recipe.prepare), data, log=log)

    def pretrain_base():
        from gts_megatron.base.pretrain import pretrain
        from gts_megatron.engine.checkpoint import finished_checkpoint

        if finished_checkpoint(base, recipe.base_steps) is None:
            result = pretrain(_config(run_dir, recipe, [f"train.steps={recipe.base_steps}"]), base)
            if result.interrupted_by:
                raise Interrupted(result.interrupted_by, "dense pretraining")

    def probe():
        from gts_megatron.probe.fleet import run_fleet
        run_fleet(ProbeConfig(base=str(base / "checkpoints"), data=str(data), languages=langs, delta="gradient",
                              steps=recipe.probe_steps, tokens_per_step=recipe.probe_tokens_per_step,
                              seq_length=seq, micro_batch_size=8), run_dir / "probes", log=log)

    def make():
        from gts_megatron.plan.make import make_plan
        make_plan(PlanConfig(probes=str(run_dir / "probes"), languages=langs, k=recipe.groups), plan.parent, log=log)

    def experiment():
        from gts_megatron.experiment import run_seeds
        cfg = ExperimentConfig(base=str(base / "checkpoints"), data=str(data), plan=str(plan),
                               arms=["dense", "gts", "random"], learned_steps=recipe.learned_steps,
                               train_seeds=list(recipe.train_seeds), **windows)
        train = _config(run_dir, recipe, [f"train.steps={recipe.arm_steps}", "train.lr=1.0e-3", "train.min_lr=1.0e-4",
                                          f"train.warmup_steps={max(1, recipe.arm_steps // 20)}",
                                          "train.eval_interval=0", "train.save_interval=0"])
        run_seeds(cfg, train, run_dir / "experiment", log=log)

    def adapt_new_language():
        from gts_megatron.adapt import adapt
        first_seed = run_dir / "experiment" / f"seed-{recipe.train_seeds[0]}"
        adapt(AdaptConfig(checkpoint=str(first_seed / "gts" / "group"), lang=recipe.new_language,
                          data=str(data), steps=recipe.adapt_steps, lr=1e-3, seq_length=seq, **windows),
              run_dir / "adapt", log=log)

    def mechanism():
        run_mechanism(run_dir / "mechanism", recipe.mechanism, log=log)

    def report():
        from gts_megatron.demo.report import write_report
        write_report(run_dir, recipe, log=log)

    return [("corpus", f"the demo corpus ({len(recipe.languages)} languages)", corpus),
            ("data", "tokenizer and per-language token datasets", tokens),
            ("base", f"dense base on {len(langs)} languages, {recipe.base_steps} steps", pretrain_base),
            ("probe", f"probe fleet on local Ray, {recipe.probe_steps} x {recipe.probe_tokens_per_step} tokens per "
                      f"language", probe),
            ("plan", f"similarity, {recipe.groups} groups, MoE layers", make),
            ("experiment", f"dense vs GtS vs random groups, {recipe.arm_steps} steps each, seeds "
                           f"{', '.join(map(str, recipe.train_seeds))}", experiment),
            ("adapt", f"{recipe.new_language} as a new expert, {recipe.adapt_steps} steps", adapt_new_language),
            ("mechanism", f"the same on {recipe.mechanism.families} planted families that interfere", mechanism),
            ("report", "report.md with figures", report)]


def run_demo(run_dir: Path, mode: str = "default", log: Callable = print) -> Path:
    """Run (or resume) the demo in ``run_dir`` (``mode``: quick, default or full); returns the
    report's path."""
    recipe = RECIPES[mode]
    run_dir.mkdir(parents=True, exist_ok=True)
    state_path = run_dir / STATE_FILE
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    was = state.get("mode", "quick" if state.get("quick") else "full") if state else mode
    if was != mode:
        _refuse_other_mode(run_dir, was)
    state.update(mode=mode, quick=mode == "quick", recipe=asdict(recipe))
    stages = demo_stages(run_dir, recipe, log)
    for number, (name, what, run) in enumerate(stages, 1):
        log(f"[demo {number}/{len(stages)}] {name}: {what}")
        started = time.perf_counter()
        run()
        seconds = state.setdefault("seconds", {})  # summed over runs: the time each stage took in all
        seconds[name] = round(seconds.get(name, 0.0) + time.perf_counter() - started, 1)
        atomic_write_text(state_path, json.dumps(state, indent=1) + "\n")
    log(f"demo done: {sum(state['seconds'].values()) / 60:.1f} min in all; report: {run_dir / 'report.md'}")
    return run_dir / "report.md"


def _refuse_other_mode(run_dir: Path, was: str) -> None:
    from gts_megatron.errors import GtsError

    flag = {"quick": "--quick", "full": "--full", "default": "the default"}[was]
    raise GtsError(f"{run_dir} holds a demo run with {flag}; use another --run-dir "
                   f"(the defaults are runs/demo, runs/demo-quick and runs/demo-full)")
