"""Pipeline parallelism on real 2-process gloo runs: PP=2 reproduces one process for dense
pretraining and both GtS stages (MoE layers on both pipeline stages, the group ids reaching each),
checkpoints are layout-free (a PP=2 run resumes in one process and the reverse; a PP=2 checkpoint
evaluates, expands, exports and adapts like a one-process one), PP=2 x TP=2 trains."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from tests.conftest import TINY, indexed_args, read_metrics, run_gts, write_family_plan

PP2 = ["--nproc-per-node", "2", "--set", "parallel.pipeline=2"]
STEPS = ["--set", "train.steps=3"]


@pytest.fixture(scope="module")
def pipeline_setup(gts_setup, tmp_path_factory) -> dict:
    """gts_setup's base expanded with MoE in both layers (one per pipeline stage at PP=2), and the
    single-process reference runs: dense from the base, stage 1 from the expansion, stage 2 from
    stage 1."""
    root = tmp_path_factory.mktemp("pipeline")
    plan = write_family_plan(gts_setup["data"], root / "plan.json", moe_layers=(0, 1))
    run_gts("expand", "--dense", str(gts_setup["base"]), "--plan", str(plan), "--out", str(root / "moe"))
    runs = {"dense": ("pretrain", [], gts_setup["base"]),
            "group": ("train", ["--stage", "group", "--set", f"moe.plan={plan}"], root / "moe"),
            "learned": ("train", ["--stage", "learned", "--set", f"moe.plan={plan}"], root / "group" / "checkpoints")}
    args = {name: [command, *stage, "--config", TINY, *indexed_args(gts_setup["data"]), *STEPS,
                   "--set", f"train.init_from={start}"] for name, (command, stage, start) in runs.items()}
    for name, command in args.items():
        run_gts(*command[:1], "--run-dir", str(root / name), *command[1:])
    return {"root": root, "args": args, "data": gts_setup["data"]}


def _weights(run: Path, out: Path) -> dict[str, torch.Tensor]:
    """The tensors of a run's (or a checkpoints folder's) last checkpoint by their layout-free
    name (each rank's RNG state aside)."""
    folder = run / "checkpoints" if (run / "checkpoints").is_dir() else run
    last = sorted(folder.glob("iter_*"))[-1]
    dcp_to_torch_save(last, out)
    loaded = torch.load(out, weights_only=True)
    return {k: v for k, v in loaded.items() if torch.is_tensor(v) and not k.startswith("rng_state")}


@pytest.mark.parametrize("stage", ["dense", "group", "learned"])
def test_two_pipeline_stages_match_one_process(pipeline_setup, tmp_path, stage):
    command, pp2 = pipeline_setup["args"][stage], pipeline_setup["root"] / f"pp2-{stage}"  # the eval test reads it
    run_gts(command[0], "--run-dir", str(pp2), *command[1:], *PP2)
    expected, got = read_metrics(pipeline_setup["root"] / stage), read_metrics(pp2)
    assert [m.get("step") for m in got] == [m.get("step") for m in expected]
    for want, have in zip(expected, got):
        assert set(have) == set(want)
        for key in want:
            if key not in ("step_time_s", "tokens_per_s"):  # loss, grad norm, router metrics, valid losses
                assert abs(have[key] - want[key]) <= 1e-5, (key, want, have)
    if stage == "group":
        assert "router_loss" in got[0] and "valid_router_accuracy" in got[-1]
    # the trained weights and optimizer moments, tensor by tensor
    one, two = _weights(pipeline_setup["root"] / stage, tmp_path / "one.pt"), _weights(pp2, tmp_path / "two.pt")
    assert any("layers.1.mlp.experts" in k for k in one) == (stage != "dense")
    assert_close(one, two)


def assert_close(one: dict[str, torch.Tensor], two: dict[str, torch.Tensor]) -> None:
    """The same tensor names, and values within 1e-5."""
    assert sorted(one) == sorted(two)
    assert max(float((one[k].float() - two[k].float()).abs().max()) for k in one) <= 1e-5


def _pp2_run(pipeline_setup, stage: str) -> Path:
    """The PP=2 run of ``stage`` the comparison trained (trained here when a test runs alone)."""
    pp2 = pipeline_setup["root"] / f"pp2-{stage}"
    if not pp2.is_dir():
        command = pipeline_setup["args"][stage]
        run_gts(command[0], "--run-dir", str(pp2), *command[1:], *PP2)
    return pp2


def test_a_pipeline_checkpoint_evaluates_alike_in_one_process(pipeline_setup, tmp_path):
    pp2 = _pp2_run(pipeline_setup, "group")
    scores = {}
    for name, run in (("one", pipeline_setup["root"] / "group"), ("pp2", pp2)):
        run_gts("eval", "--checkpoint", str(run / "checkpoints"), "--data", str(pipeline_setup["data"]),
                "--out", str(tmp_path / f"{name}.json"), "--max-tokens", "256")
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())["languages"]
    assert sorted(scores["one"]) == sorted(scores["pp2"]) and len(scores["one"]) == 4
    for lang, result in scores["one"].items():
        assert abs(scores["pp2"][lang]["perplexity"] - result["perplexity"]) <= 1e-4 * result["perplexity"]


def test_a_run_resumes_across_layouts_one_process_to_pp2_and_back(pipeline_setup, tmp_path):
    """Stage 1, steps 1-3 at one layout, 4-5 at the other: the losses of steps 4 and 5 are the
    ones a run that stays in one process gets (the weights, Adam's moments and the data position
    all cross the layout change)."""
    stage = "group"
    command = pipeline_setup["args"][stage]
    runs = {"one": (pipeline_setup["root"] / stage, []), "pp2-to-one": (_pp2_run(pipeline_setup, stage), []),
            "one-to-pp2": (pipeline_setup["root"] / stage, PP2)}
    losses = {}
    for name, (source, layout) in runs.items():
        shutil.copytree(source, tmp_path / name)
        proc = run_gts(command[0], "--run-dir", str(tmp_path / name), *command[1:], "--set", "train.steps=5", *layout)
        assert "resumed from" in proc.stdout + proc.stderr
        losses[name] = {m["step"]: m["loss"] for m in read_metrics(tmp_path / name) if "loss" in m and m["step"] > 3}
    assert sorted(losses["one"]) == [4, 5]
    for name in ("pp2-to-one", "one-to-pp2"):
        assert losses[name].keys() == losses["one"].keys()
        for step, loss in losses["one"].items():
            assert abs(losses[name][step] - loss) <= 1e-5, (name, step, losses[name][step], loss)


def test_pipeline_checkpoints_expand_export_and_adapt_like_one_process_ones(pipeline_setup, tmp_path):
    from safetensors.torch import load_file

    root, data = pipeline_setup["root"], pipeline_setup["data"]
    plan = json.loads((root / "plan.json").read_text())
    for name, run in (("one", root / "dense"), ("pp2", _pp2_run(pipeline_setup, "dense"))):
        run_gts("expand", "--dense", str(run / "checkpoints"), "--plan", str(root / "plan.json"),
                "--out", str(tmp_path / f"moe-{name}"))
    assert_close(_weights(tmp_path / "moe-one", tmp_path / "a.pt"), _weights(tmp_path / "moe-pp2", tmp_path / "b.pt"))
    for name, run in (("one", root / "group"), ("pp2", _pp2_run(pipeline_setup, "group"))):
        run_gts("export-hf", str(run / "checkpoints"), "--out", str(tmp_path / f"hf-{name}"))
    hf = {name: load_file(tmp_path / f"hf-{name}" / "model.safetensors") for name in ("one", "pp2")}
    assert any("experts" in k for k in hf["one"])
    assert_close(hf["one"], hf["pp2"])
    # a new language from a PP=2 stage-1 run of a plan without it
    new, old = plan["languages"][-1], plan["languages"][:-1]
    smaller = {**plan, "languages": old, "language_to_group": {k: plan["language_to_group"][k] for k in old}}
    (tmp_path / "plan3.json").write_text(json.dumps(smaller))
    run_gts("expand", "--dense", str(root / "dense" / "checkpoints"), "--plan", str(tmp_path / "plan3.json"),
            "--out", str(tmp_path / "moe3"))
    run_gts("train", "--stage", "group", "--config", TINY, "--run-dir", str(tmp_path / "stage1"),
            *indexed_args(data), "--set", f"data.languages={json.dumps(old)}", *STEPS,
            "--set", f"moe.plan={tmp_path / 'plan3.json'}", "--set", f"train.init_from={tmp_path / 'moe3'}", *PP2)
    run_gts("adapt", "--checkpoint", str(tmp_path / "stage1"), "--lang", new, "--data", str(data), "--steps", "3",
            "--seq-length", "32", "--micro-batch-size", "2", "--global-batch-size", "4", "--window", "32",
            "--out", str(tmp_path / "adapt"))
    report = json.loads((tmp_path / "adapt" / "adapt.json").read_text())
    assert json.loads((tmp_path / "adapt" / "plan.json").read_text())["language_to_group"][new] == plan["num_experts"]
    for lang in old:  # the old languages' experts are frozen: they score exactly as before
        assert report["old"][lang]["after"] == report["old"][lang]["before"]


def test_placement_at_pp2_by_ep2_trains_as_at_ep2(pipeline_setup, tmp_path):
    """Group-aware placement across pipeline stages: each EP rank of each stage reads its groups'
    languages, so 4 processes (PP=2 x EP=2) train as the 2 of EP=2 alone do."""
    command = pipeline_setup["args"]["group"]
    placed = ["--set", "parallel.expert=2", "--set", "moe.placement=true", "--set", "train.steps=2"]
    run_gts(command[0], "--run-dir", str(tmp_path / "ep2"), *command[1:], "--nproc-per-node", "2", *placed)
    proc = run_gts(command[0], "--run-dir", str(tmp_path / "pp2-ep2"), *command[1:], "--nproc-per-node", "4",
                   "--set", "parallel.pipeline=2", *placed, timeout=400)
    assert "world 4 = TP 1 x PP 2 x DP 2 (EP 2)" in proc.stdout
    want, have = read_metrics(tmp_path / "ep2"), read_metrics(tmp_path / "pp2-ep2")
    assert [m["step"] for m in have] == [m["step"] for m in want]
    for w, h in zip(want, have):
        for key in ("loss", "router_loss", "router_accuracy", "grad_norm", "valid_loss"):
            if key in w:
                assert abs(h[key] - w[key]) <= 1e-5, (key, w, h)


def test_stage_one_trains_at_pp2_by_tp2(pipeline_setup, tmp_path):
    command = pipeline_setup["args"]["group"]
    proc = run_gts(command[0], "--run-dir", str(tmp_path), *command[1:], "--nproc-per-node", "4",
                   "--set", "parallel.pipeline=2", "--set", "parallel.tensor=2",
                   "--set", "parallel.sequence_parallel=true", "--set", "train.steps=2", timeout=400)
    assert "world 4 = TP 2 x PP 2 x DP 1" in proc.stdout
    # step 1 trains at the warm-up's rate 0 in both runs, so steps 1 and 2 see the same weights
    want, have = read_metrics(pipeline_setup["root"] / "group")[:2], read_metrics(tmp_path)[:2]
    assert [m["step"] for m in have] == [1, 2]
    for w, h in zip(want, have):
        for key in ("loss", "router_loss", "router_accuracy", "grad_norm"):
            assert abs(h[key] - w[key]) <= 1e-5, (key, w, h)
