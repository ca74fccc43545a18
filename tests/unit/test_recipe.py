"""A recipe's stages and the runner's records, with real (quick) `gts` commands: the stages come in
order with the commands a user would type, a done stage is skipped, a failed one records its
one-line reason and runs again, and a change upstream reruns what reads it."""
from __future__ import annotations

from pathlib import Path

import pytest

from gts_megatron.config import TrainConfig
from gts_megatron.config.recipe import load_recipe
from gts_megatron.errors import GtsError
from gts_megatron.recipe import dry_run
from gts_megatron.recipe.runner import format_status, run_stages, run_status
from gts_megatron.recipe.stages import Stage, recipe_stages


def _recipe(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "corpus").mkdir(exist_ok=True)
    (tmp_path / "hf").mkdir(exist_ok=True)
    path = tmp_path / "recipe.yaml"
    path.write_text("corpus: corpus\nlanguages: [de, en]\nbase: {hf: hf}\nplan: {k: 2}\n"
                    "train: {steps: 10, learned_steps: 4}\nset: [train.lr=1.0e-3, train.warmup_steps=2]\n" + extra)
    return path


def test_an_hf_recipe_runs_its_stages_in_order_with_the_imported_tokenizer(tmp_path):
    recipe = load_recipe(_recipe(tmp_path, "export_hf: {}\neval: {baselines: [dense, random]}\n"))
    stages = recipe_stages(recipe)
    assert [s.name for s in stages] == ["import", "data", "probe", "plan", "expand", "group", "learned", "eval",
                                        "baselines", "export"]
    by_name = {s.name: s for s in stages}
    assert "--tokenizer" in by_name["data"].commands[0]
    assert str(tmp_path / "run" / "base" / "hf" / "tokenizer.json") in by_name["data"].commands[0]
    assert by_name["export"].commands[0][:3] == ("gts", "export-hf", str(tmp_path / "run" / "learned" / "checkpoints"))
    # stage 2 goes on down stage 1's schedule: the rate stage 1 ended at, the samples after its
    learned = " ".join(by_name["learned"].commands[0])
    samples = 6 * TrainConfig().global_batch_size  # stage 1's 6 steps
    assert f"train.data_offset={samples}" in learned and "train.steps=4" in learned
    # cosine from 1e-3 to 3e-5 over steps 2..10, half-way at step 6
    assert f"train.lr={3e-5 + (1e-3 - 3e-5) * 0.5}" in learned
    assert "train.init_from=" + str(tmp_path / "run" / "group" / "checkpoints") in learned
    assert dry_run(recipe).count("\ngts ") == dry_run(recipe).count("# [") == 10


def test_a_pretrained_base_trains_on_the_prepared_data_first(tmp_path):
    path = _recipe(tmp_path)
    path.write_text(path.read_text().replace("base: {hf: hf}", "base: {pretrain_steps: 30}"))
    stages = recipe_stages(load_recipe(path))
    assert [s.name for s in stages] == ["data", "base", "probe", "plan", "expand", "group", "learned", "eval"]
    assert "--optimizer-state" not in stages[4].commands[0]
    # stages that continue the base's Adam moments get them expanded; the base's own run does not ask
    path.write_text(path.read_text().replace("learned_steps: 4}", "learned_steps: 4, set: [train.init_optimizer=true]}"))
    stages = {s.name: s for s in recipe_stages(load_recipe(path))}
    assert "--optimizer-state" in stages["expand"].commands[0]
    assert "train.init_optimizer=true" in stages["group"].commands[0]
    assert "train.init_optimizer=true" not in stages["base"].commands[0]


@pytest.mark.parametrize("extra, fragment", [
    ("adapt: {languages: [en]}\n", "adapt.languages en are already GtS languages"),
    ("config: corpus\n", "an imported base brings its own model"),
    ("train: {steps: 4, learned_steps: 4}\n", "twice"),
    ("probe: {executor: process}\nslurm: {probe_nodes: 2}\n", "a Ray cluster runs the probes"),
    ("slurm: {partition: 'a b'}\n", "slurm: partition"),
    ("probe: {executor: ray}\nslurm: {probe_array: true, probe_nodes: 1}\n", "give one of probe_nodes"),
    ("slurm: {array_parallel: 2}\n", "set probe_array: true"),
    ("eval: {train_seeds: [1, 2], languages: [de]}\n", "the comparison scores the plan's languages"),
    ("report: {}\n", "report: it reports the comparison over seeds; set eval.train_seeds"),
    ("demo_corpus: true\n", "exactly one of corpus"),
])
def test_inconsistent_recipes_are_refused_in_one_line(tmp_path, extra, fragment):
    with pytest.raises(GtsError, match=fragment):
        load_recipe(_recipe(tmp_path, extra))


def test_the_packaged_template_is_a_valid_recipe_once_its_placeholders_exist(tmp_path):
    from gts_megatron.recipe import recipe_text

    (tmp_path / "corpus").mkdir()
    (tmp_path / "hf-model").mkdir()
    (tmp_path / "my-gts.yaml").write_text(recipe_text("hf-model"))
    names = [s.name for s in recipe_stages(load_recipe(tmp_path / "my-gts.yaml"))]
    assert names == ["import", "data", "probe", "plan", "expand", "group", "learned", "eval", "export"]


def test_the_demo_recipes_build_the_corpus_compare_over_seeds_and_report(tmp_path):
    """The packaged demo recipes: the demo corpus of the GtS and the held-out language, the
    packaged run config, GtS trained inside the comparison over seeds with its own learning rate,
    the first seed's GtS model adapted, then the mechanism check and the report."""
    from gts_megatron.recipe import open_recipe, packaged_recipes

    assert {"demo", "demo-quick", "demo-full", "hf-model"} <= set(packaged_recipes())
    for name in ("demo", "demo-quick", "demo-full"):
        stages = recipe_stages(open_recipe(name, run_dir=tmp_path / name))
        assert [s.name for s in stages] == ["corpus", "data", "base", "probe", "plan", "experiment", "adapt",
                                            "mechanism", "report"], name
    by_name = {s.name: s for s in stages}  # demo-full
    assert by_name["corpus"].commands[0][-2:] == ("--languages", "ar,de,en,es,fa,fr,it,ko,ru,tl,vi,pt")
    assert by_name["data"].after == ("corpus",) and by_name["data"].reads == ()
    base, experiment = (" ".join(by_name[n].commands[0]) for n in ("base", "experiment"))
    assert "configs/demo.yaml" in base and "train.lr=2.0e-4" not in base  # train.set: the arms only
    assert "train.init_optimizer" not in base
    assert "--arms dense,gts,random" in experiment and "--train-seeds 1,2,3" in experiment
    assert "train.lr=2.0e-4" in experiment and "train.steps=150" in experiment
    assert "train.init_optimizer=true" in experiment  # the arms continue the base's Adam moments
    assert "moe.router_loss_weight=0.3" in experiment
    adapt = by_name["adapt"].commands[0]
    assert adapt[3] == str(tmp_path / "demo-full" / "experiment" / "seed-1" / "gts" / "learned" / "checkpoints")
    assert by_name["adapt"].after == ("experiment", "data")
    assert by_name["report"].after == ("data", "plan", "experiment", "adapt", "mechanism")
    assert by_name["report"].commands[0][-2:] == ("--title", "GtS demo report (--full)")


def _stage(tmp_path: Path, name: str, *command: str, after=()) -> Stage:
    # `gts config` writes no file: let the stage's log, which the runner writes, stand for its output
    return Stage(name, name, (("gts", *command),), tmp_path / "run" / "stages" / f"{name}.log", tuple(after))


def test_the_runner_skips_what_is_done_records_failures_and_reruns_what_reads_a_rerun(tmp_path, capsys):
    run = tmp_path / "run"
    first = _stage(tmp_path, "first", "config", "show")
    broken = _stage(tmp_path, "second", "config", "check", str(tmp_path / "missing.yaml"), after=["first"])
    with pytest.raises(GtsError, match="stage second failed"):
        run_stages(run, [first, broken], log=lambda line: None)
    assert [s.state for s in run_status(run, [first, broken])] == ["done", "failed"]
    assert "missing.yaml does not exist" in format_status(run, [first, broken])
    fixed = _stage(tmp_path, "second", "config", "show", after=["first"])
    lines: list[str] = []
    run_stages(run, [first, fixed], log=lines.append)
    assert lines[0].endswith("done before, skipped") and lines[-1].startswith("[2/2] second done")
    assert [s.state for s in run_status(run, [first, fixed])] == ["done", "done"]
    # a stage run again (--from) leaves the stages that read it to run again as well
    run_stages(run, [first, fixed], start_from="first", log=lines.append)
    assert [s.state for s in run_status(run, [first, fixed])] == ["done", "done"]
    assert sum(line.endswith("skipped") for line in lines) == 1


def test_a_stage_ended_by_ctrl_c_or_term_is_interrupted_whether_it_exited_or_the_signal_ended_it():
    from gts_megatron.recipe.runner import _stopping_signal

    assert [_stopping_signal(code) for code in (130, -2, 143, -15)] == [2, 2, 15, 15]
    assert [_stopping_signal(code) for code in (1, 2, -9, 137, -6)] == [None] * 5  # failures, the OOM killer
