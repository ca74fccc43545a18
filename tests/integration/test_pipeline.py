"""Pipeline parallelism on real 2-process gloo runs: PP=2 reproduces one process for dense
pretraining and both GtS stages (MoE layers on both pipeline stages, the group ids reaching each),
a PP=2 checkpoint evaluates at PP=1 with the same perplexity, PP=2 x TP=2 trains."""
from __future__ import annotations

import json
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
    """The tensors of a run's last checkpoint by their layout-free name (each rank's RNG state aside)."""
    last = sorted((run / "checkpoints").glob("iter_*"))[-1]
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
    assert sorted(one) == sorted(two) and any("layers.1.mlp.experts" in k for k in one) == (stage != "dense")
    assert max(float((one[k].float() - two[k].float()).abs().max()) for k in one) <= 1e-5


def test_a_pipeline_checkpoint_evaluates_alike_in_one_process(pipeline_setup, tmp_path):
    pp2 = pipeline_setup["root"] / "pp2-group"
    if not pp2.is_dir():  # run alone, without the comparison that trains it
        command = pipeline_setup["args"]["group"]
        run_gts(command[0], "--run-dir", str(pp2), *command[1:], *PP2)
    scores = {}
    for name, run in (("one", pipeline_setup["root"] / "group"), ("pp2", pp2)):
        run_gts("eval", "--checkpoint", str(run / "checkpoints"), "--data", str(pipeline_setup["data"]),
                "--out", str(tmp_path / f"{name}.json"), "--max-tokens", "256")
        scores[name] = json.loads((tmp_path / f"{name}.json").read_text())["languages"]
    assert sorted(scores["one"]) == sorted(scores["pp2"]) and len(scores["one"]) == 4
    for lang, result in scores["one"].items():
        assert abs(scores["pp2"][lang]["perplexity"] - result["perplexity"]) <= 1e-4 * result["perplexity"]


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
