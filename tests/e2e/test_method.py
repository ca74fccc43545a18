"""The method's mechanism, end to end through every stage: languages in families whose grammars
conflict (the same token is followed by other tokens in each family) compete for a small dense
model's capacity; probes find the families, the plan groups by them, and at equal tokens GtS
beats both dense continued training and random groups of the same sizes, over training seeds."""
import json

import pytest

from gts_megatron.plan.families import adjusted_rand_index
from tests.conftest import TINY, run_gts

pytestmark = pytest.mark.slow

TRAIN = ["--set", "train.micro_batch_size=8", "--set", "train.global_batch_size=16", "--set", "train.seq_length=64",
         "--set", "train.lr=3e-3", "--set", "train.min_lr=3e-4", "--set", "train.warmup_steps=10",
         "--set", "train.save_interval=0"]


def test_planted_interference_gts_beats_dense_and_random_groups(tmp_path):
    data = tmp_path / "data"
    run_gts("data", "synthetic", "--out", str(data), "--languages", "8", "--families", "4", "--vocab-size", "256",
            "--documents", "200", "--document-tokens", "256")
    indexed = ["--set", "data.kind=indexed", "--set", f"data.path={data}"]
    run_gts("pretrain", "--config", TINY, "--run-dir", str(tmp_path / "base"), *indexed, *TRAIN,
            "--set", "train.steps=100", timeout=600)
    base = str(tmp_path / "base" / "checkpoints")
    run_gts("probe", "--base", base, "--data", str(data), "--delta", "gradient", "--tokens-per-step", "4096",
            "--lr", "1e-3", "--seq-length", "64", "--micro-batch-size", "8", "--executor", "process",
            "--out", str(tmp_path / "probes"), timeout=600)
    run_gts("plan", "--probes", str(tmp_path / "probes"), "--k", "4", "--top-n", "2", "--out", str(tmp_path / "plan"))
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    families = json.loads((data / "manifest.json").read_text())["families"]
    names = sorted(families)
    assert adjusted_rand_index([int(families[n].removeprefix("family")) for n in names],
                               [plan["language_to_group"][n] for n in names]) == 1.0
    out = tmp_path / "experiment"
    run_gts("experiment", "--config", TINY, *indexed, *TRAIN, "--set", "train.steps=150", "--base", base,
            "--data", str(data), "--plan", str(tmp_path / "plan" / "plan.json"), "--arms", "dense,gts,random",
            "--train-seeds", "1,2", "--max-tokens", "2048", "--run-dir", str(out), timeout=900)
    summary = json.loads((out / "summary.json").read_text())
    for other in ("dense", "random"):
        verdict = summary["verdicts"][other]
        assert verdict["word"] == "beats" and verdict["seed_wins"] == 2, (other, summary["arms"])
    random_plans = [json.loads((out / f"seed-{s}" / "random" / "plan.json").read_text())["language_to_group"]
                    for s in (1, 2)]
    assert random_plans[0] != random_plans[1]  # each seed draws its own random groups
    assert "GtS beats dense" in (out / "summary.md").read_text()
