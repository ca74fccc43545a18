"""A recipe: one typed YAML that describes a whole GtS run (`gts run RECIPE`).

Its sections reuse the commands' own options (probe, plan, prepare, eval windows) without the
fields the recipe fills in itself (the base, the data, the languages), so a value the command
would refuse is refused here, before anything runs. Paths are relative to the recipe file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

from pydantic import Field, ValidationError, create_model, model_validator

from gts_megatron.config.commands import EvalWindows, MechanismConfig, PlanConfig, PrepareConfig, ProbeConfig
from gts_megatron.config.launch import SlurmJobConfig
from gts_megatron.config.loading import (apply_overrides, describe_error, describe_fields, packaged_configs, parse_yaml,
                                         read_utf8)
from gts_megatron.config.run import _Section
from gts_megatron.errors import GtsError


def _options_without(section: type[_Section], name: str, drop: tuple[str, ...], filled: str) -> type[_Section]:
    """``section``'s fields less ``drop`` (which the recipe fills in), as a new section."""
    fields = {key: (f.annotation, f) for key, f in section.model_fields.items() if key not in drop}
    doc = f"{section.__doc__.strip().splitlines()[0]} ({', '.join(drop)}: {filled})"
    return create_model(name, __base__=_Section, __doc__=doc, **fields)


PrepareOptions = _options_without(PrepareConfig, "PrepareOptions", ("corpus", "languages"),
                                  "the recipe's corpus and languages")
ProbeOptions = _options_without(ProbeConfig, "ProbeOptions", ("base", "data", "languages"),
                                "the recipe's base, data and languages")
PlanOptions = _options_without(PlanConfig, "PlanOptions", ("probes", "deviations", "languages"),
                               "the probe stage's results and the recipe's languages")

SlurmOptions = _options_without(SlurmJobConfig, "SlurmOptions", ("nodes", "launcher", "nproc_per_node", "job_name"),
                                "one job of one task per stage")


class SlurmRecipe(SlurmOptions):
    """`gts run --launcher slurm`: the resources of every stage's job (as `gts launch`'s flags)."""

    probe_nodes: Optional[int] = Field(
        None, ge=1, description="the probe stage as a Ray cluster on this many nodes (`gts launch ray`'s "
                                "template: head on the first, the fleet spread over all); null = one task like "
                                "every stage (a local Ray inside it)")
    probe_array: bool = Field(
        False, description="the probe stage as a Slurm job array, one task per language without Ray (`gts launch "
                           "probe-array`'s template; array_parallel caps the tasks at once), then a one-task job "
                           "that checks every language is probed and records the stage")


class BaseRecipe(_Section):
    """The dense model the method starts from: a Hugging Face folder to import, or one trained here."""

    hf: Optional[str] = Field(None, description="Hugging Face Llama/Mistral/Qwen2 folder to import; its "
                                                "tokenizer then tokenizes the corpus")
    pretrain_steps: Optional[int] = Field(
        None, ge=1, description="instead of hf: train a dense base from scratch for this many steps (the run "
                                "config's model, a tokenizer trained on the corpus)")
    verify: bool = Field(True, description="hf: compare the import's logits with transformers")

    @model_validator(mode="after")
    def _one_source(self) -> "BaseRecipe":
        if (self.hf is None) == (self.pretrain_steps is None):
            raise ValueError("give exactly one of base.hf (a folder to import) or base.pretrain_steps")
        return self


class TrainRecipe(_Section):
    """GtS training of the expanded model: stage 1 (group routing), then stage 2 (learned routing)."""

    steps: int = Field(100, ge=1, description="training steps of both stages together")
    learned_steps: int = Field(0, ge=0, description="of steps, the last ones in stage 2 (learned top-k "
                                                    "routing); 0 = stage 1 only")
    nproc_per_node: int = Field(1, ge=1, description="processes per training run (parallel layout: set "
                                                     "parallel.tensor / parallel.expert under `set`)")
    set: list[str] = Field([], description="overrides of the GtS and baseline runs only, after the recipe's set "
                                           "(e.g. a continued-training learning rate)")

    @model_validator(mode="after")
    def _stage_one_steps(self) -> "TrainRecipe":
        if self.learned_steps >= self.steps:
            raise ValueError(f"train.learned_steps {self.learned_steps} leaves stage 1 no steps of {self.steps}")
        return self


class EvalRecipe(EvalWindows):
    """Held-out perplexity of the GtS model per language, beside optional baselines at equal tokens."""

    languages: Optional[list[str]] = Field(None, description="languages to score; null = the recipe's languages")
    baselines: list[Literal["dense", "random"]] = Field(
        [], description="also train and score, on the same tokens: dense (continued training of the base) and "
                        "random (GtS with random groups of the same sizes)")
    train_seeds: Optional[list[int]] = Field(
        None, min_length=1, description="train GtS and the baselines once per seed, in one comparison (`gts "
                                        "experiment --train-seeds`: mean ± std and verdicts): the stages expand, "
                                        "group, learned, eval and baselines become one, experiment, and the first "
                                        "seed's GtS model is the one adapted and exported; null = each trained once")

    @model_validator(mode="after")
    def _seeds_score_the_plan(self) -> "EvalRecipe":
        if self.train_seeds is not None and self.languages is not None:
            raise ValueError("eval.languages: with train_seeds the comparison scores the plan's languages; "
                             "drop one of them")
        return self


class AdaptRecipe(_Section):
    """New languages, each as a new expert of the trained model (`gts adapt`)."""

    languages: list[str] = Field(min_length=1, description="languages in the data but not in the recipe's")
    steps: int = Field(100, ge=1, description="training steps per language")
    lr: float = Field(2e-4, gt=0, description="peak learning rate")


class ExportRecipe(_Section):
    """The trained GtS model as a Hugging Face folder (`gts export-hf`, GtsForCausalLM)."""

    architecture: Optional[str] = Field(None, description="family to write; null = the imported one")


class ReportRecipe(_Section):
    """report.md of the run (`gts report`): data, plan, the comparison over seeds, adaptation, figures."""

    title: str = Field("GtS report", description="the report's heading")
    note: str = Field("", description="a paragraph under the heading (e.g. what the run can and cannot show)")


STAGE_SECTIONS = ("prepare", "base", "probe", "plan", "train", "eval", "adapt", "export_hf", "mechanism", "report",
                  "slurm")


class Recipe(_Section):
    """`gts run`: the whole method, stage by stage, each stage into <run_dir>/<stage>."""

    run_dir: str = Field("run", description="where every stage writes (relative to the recipe)")
    corpus: Optional[str] = Field(None, description="corpus directory, one file per language (see `gts data "
                                                    "prepare`)")
    data: Optional[str] = Field(None, description="instead of corpus: a data directory already prepared")
    demo_corpus: bool = Field(False, description="instead of corpus: the embedded demo corpus (verse-aligned "
                                                 "Bible texts) of the recipe's languages, built in <run_dir>/corpus")
    languages: Optional[list[str]] = Field(None, description="the GtS languages; null = every one in the data")
    config: Optional[str] = Field(None, description="run config YAML of the training runs, or a packaged one's "
                                                    "name (demo, tiny); pretrain base only: an imported base "
                                                    "brings its model")
    set: list[str] = Field([], description="overrides of every training run, SECTION.FIELD=VALUE as --set")
    prepare: PrepareOptions = Field(default_factory=PrepareOptions, description="tokenizer and datasets")
    base: BaseRecipe = Field(description="the dense base model")
    probe: ProbeOptions = Field(default_factory=ProbeOptions, description="the per-language probes")
    plan: PlanOptions = Field(description="groups and MoE layers (k, the number of groups, at least)")
    train: TrainRecipe = Field(default_factory=TrainRecipe, description="GtS training")
    eval: Optional[EvalRecipe] = Field(default_factory=EvalRecipe, description="evaluation; null = none")
    adapt: Optional[AdaptRecipe] = Field(None, description="new languages as new experts; null = none")
    export_hf: Optional[ExportRecipe] = Field(None, description="a Hugging Face folder of the model; null = none")
    mechanism: Optional[MechanismConfig] = Field(None, description="the mechanism check on planted families "
                                                                   "(`gts mechanism`); null = none")
    report: Optional[ReportRecipe] = Field(None, description="report.md (needs eval.train_seeds); null = none")
    slurm: Optional[SlurmRecipe] = Field(None, description="`gts run --launcher slurm`: the jobs' resources "
                                                            "(logs default to <run_dir>/slurm-logs)")

    @model_validator(mode="after")
    def _consistent(self) -> "Recipe":
        if (self.corpus is not None) + (self.data is not None) + self.demo_corpus != 1:
            raise ValueError("give exactly one of corpus (a directory to prepare), data (one already prepared) or "
                             "demo_corpus: true")
        if self.demo_corpus and self.languages is None:
            raise ValueError("demo_corpus needs languages: the demo corpus languages to build")
        if self.report is not None and (self.eval is None or self.eval.train_seeds is None):
            raise ValueError("report: it reports the comparison over seeds; set eval.train_seeds")
        if self.base.hf and self.config:
            raise ValueError("config: an imported base brings its own model; give training settings under set")
        if self.data is not None and "prepare" in self.model_fields_set:
            raise ValueError("prepare: the data is already prepared; drop the prepare section")
        if self.adapt is not None:
            if self.languages is None:
                raise ValueError("adapt needs languages: the GtS languages, so that the new ones stay out of them")
            overlap = sorted(set(self.adapt.languages) & set(self.languages))
            if overlap:
                raise ValueError(f"adapt.languages {', '.join(overlap)} are already GtS languages")
        apply_overrides({}, [*self.set, *self.train.set])  # the overrides' shape, before any run meets them
        checked = [("probe", self.probe, ProbeConfig, {"base": ".", "data": "."}),
                   ("plan", self.plan, PlanConfig, {"probes": "."})]
        if self.slurm is not None:
            checked.append(("slurm", self.slurm, SlurmJobConfig, {}))
            if self.slurm.probe_array and self.slurm.probe_nodes:
                raise ValueError("slurm: give one of probe_nodes (a Ray cluster) or probe_array (a job array)")
            if self.slurm.probe_array and self.languages is None and self.data is None:
                raise ValueError("slurm.probe_array: an array task per language needs the recipe's languages "
                                 "(or data already prepared, whose languages it takes)")
            if self.slurm.array_parallel and not self.slurm.probe_array:
                raise ValueError("slurm.array_parallel: it caps a probe array's tasks; set probe_array: true")
            if self.slurm.probe_nodes and self.probe.executor != "ray":
                raise ValueError(f"slurm.probe_nodes: a Ray cluster runs the probes; probe.executor is "
                                 f"{self.probe.executor}, set it to ray")
        for name, section, cls, filled in checked:
            try:
                values = section.model_dump(exclude_unset=True, exclude={"probe_nodes", "probe_array"})
                cls.model_validate({**values, **filled})
            except ValidationError as exc:
                error = exc.errors()[0]
                raise ValueError(f"{name}: {error['msg'].removeprefix('Value error, ')}") from None
        return self


# fields that name files, by section: resolved against the recipe's folder
_PATHS = {"": ("run_dir", "corpus", "data", "config"), "base": ("hf",), "prepare": ("tokenizer",),
          "plan": ("groups_map",), "slurm": ("log_dir",)}


def _resolve_paths(raw: dict, folder: Path) -> dict:
    raw.setdefault("run_dir", Recipe.model_fields["run_dir"].default)  # a default is relative too
    config, packaged = raw.get("config"), packaged_configs()
    if isinstance(config, str) and config in packaged:
        raw["config"] = packaged[config]
    for section, names in _PATHS.items():
        values = raw if not section else raw.get(section)
        if not isinstance(values, dict):
            continue
        for name in names:
            if isinstance(values.get(name), str):
                values[name] = str((folder / values[name]).resolve())
    return raw


def load_recipe(path: Path, relative_to: Optional[Path] = None, run_dir: Optional[Path] = None) -> Recipe:
    """A recipe from YAML, with its paths made absolute (against ``relative_to``, by default the
    recipe's folder), checked: every input it names exists. ``run_dir`` replaces the recipe's."""
    if not path.is_file():
        raise GtsError(f"recipe {path} does not exist")
    raw = parse_yaml(read_utf8(path), str(path))
    if not isinstance(raw, dict):
        raise GtsError(f"{path}: expected a mapping with sections {', '.join(STAGE_SECTIONS)}")
    if run_dir is not None:
        raw["run_dir"] = str(Path(run_dir).resolve())
    raw = _resolve_paths(raw, relative_to or path.resolve().parent)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        raise GtsError(describe_error(exc.errors()[0], str(path), Recipe)) from None
    for field, value in (("corpus", recipe.corpus), ("data", recipe.data), ("base.hf", recipe.base.hf),
                         ("config", recipe.config), ("prepare.tokenizer", recipe.prepare.tokenizer),
                         ("plan.groups_map", recipe.plan.groups_map)):
        if value is not None and not Path(value).exists():
            raise GtsError(f"{path}: {field}: {value} does not exist")
    return recipe


def describe_recipe() -> str:
    """Every recipe field with its default and meaning (``gts config show --recipe``)."""
    return describe_fields(Recipe)
