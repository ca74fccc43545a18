"""`gts experiment` trains every arm on equal tokens from one base and compares them; `gts adapt`
adds a language as a cloned expert without touching the old languages."""
from __future__ import annotations

import json

import pytest

from tests.conftest import TINY, assert_one_line_error, files_under, run_gts


def final_step(run_dir):
    latest = (run_dir / "checkpoints" / "latest").read_text().strip()
    return json.loads((run_dir / "checkpoints" / latest / "meta.json").read_text())["step"]


def test_every_arm_trains_on_equal_tokens_and_is_compared(gts_setup, tmp_path):
    out = tmp_path / "experiment"
    run_gts("experiment", "--config", TINY, "--set", "train.steps=4", "--set", "train.warmup_steps=0",
            "--base", str(gts_setup["base"]), "--data", str(gts_setup["data"]), "--plan", str(gts_setup["plan"]),
            "--learned-steps", "1", "--window", "32", "--max-tokens", "256", "--run-dir", str(out), timeout=600)
    results = json.loads((out / "results.json").read_text())
    arms = results["arms"]
    assert list(arms) == ["base", "dense", "gts", "random", "per-language", "upcycle"]
    plan = json.loads(gts_setup["plan"].read_text())
    n, layers = len(plan["languages"]), plan["moe_layers"]
    assert arms["gts"]["plan"]["language_to_group"] == plan["language_to_group"]
    random_groups = arms["random"]["plan"]["language_to_group"]
    assert sorted(random_groups.values()) == sorted(plan["language_to_group"].values())  # same group sizes
    assert random_groups != plan["language_to_group"]
    assert arms["per-language"]["plan"]["num_experts"] == n and arms["per-language"]["plan"]["moe_layers"] == layers
    assert arms["upcycle"]["plan"]["moe_layers"] == [0, 1] and arms["upcycle"]["routing"] == "learned"
    assert arms["gts"]["routing"] == "learned" and arms["dense"]["routing"] is None  # after stage 2
    # equal tokens: every arm's stages add up to train.steps
    steps = {arm: sum(final_step(d) for d in (out / arm).iterdir() if (d / "checkpoints" / "latest").is_file())
             for arm in ("dense", "gts", "random", "per-language", "upcycle")}
    assert set(steps.values()) == {4}, steps
    assert all(a["mean_perplexity"] > 1 for a in arms.values())
    table = (out / "results.md").read_text()
    assert "| gts | 2 | 1 |" in table and "| per-language | 4 | 1 |" in table
    assert (out / "perplexity.png").read_bytes()[:4] == b"\x89PNG"
    # a second run finds every stage and evaluation done and changes nothing
    before = {p: t for p, t in files_under(out).items() if "checkpoints" in str(p)}
    again = run_gts("experiment", "--config", TINY, "--set", "train.steps=4", "--set", "train.warmup_steps=0",
                    "--base", str(gts_setup["base"]), "--data", str(gts_setup["data"]), "--plan",
                    str(gts_setup["plan"]), "--learned-steps", "1", "--window", "32", "--max-tokens", "256",
                    "--run-dir", str(out))
    assert again.stdout.count("evaluation up to date") == 6
    assert {p: t for p, t in files_under(out).items() if "checkpoints" in str(p)} == before


def test_adaptation_clones_the_nearest_expert_and_leaves_old_languages_exactly_as_they_were(gts_setup, tmp_path):
    plan = json.loads(gts_setup["plan"].read_text())
    families = json.loads((gts_setup["data"] / "manifest.json").read_text())["families"]
    new = plan["languages"][-1]
    old = plan["languages"][:-1]
    if len({plan["language_to_group"][lang] for lang in old}) < 2:
        pytest.skip("the old languages do not cover both families")
    smaller = {**plan, "languages": old, "language_to_group": {k: plan["language_to_group"][k] for k in old}}
    (tmp_path / "plan3.json").write_text(json.dumps(smaller))
    run_gts("expand", "--dense", str(gts_setup["base"]), "--plan", str(tmp_path / "plan3.json"),
            "--out", str(tmp_path / "moe3"))
    run_gts("train", "--stage", "group", "--config", TINY, "--run-dir", str(tmp_path / "stage1"),
            "--set", "data.kind=indexed", "--set", f"data.path={gts_setup['data']}",
            "--set", f"data.languages={json.dumps(old)}", "--set", f"moe.plan={tmp_path / 'plan3.json'}",
            "--set", f"train.init_from={tmp_path / 'moe3'}", "--set", "train.steps=30", "--set", "train.lr=3e-3")
    out = tmp_path / "adapt"
    proc = run_gts("adapt", "--checkpoint", str(tmp_path / "stage1"), "--lang", new, "--data", str(gts_setup["data"]),
                   "--steps", "10", "--lr", "3e-3", "--seq-length", "32", "--micro-batch-size", "2",
                   "--global-batch-size", "4", "--window", "32", "--out", str(out))
    report = json.loads((out / "adapt.json").read_text())
    # the expert of the new language's own family (its token range) scores it best and is cloned
    family_group = next(plan["language_to_group"][lang] for lang in old if families[lang] == families[new])
    assert report["cloned_expert"] == family_group, report["expert_choice"]
    extended = json.loads((out / "plan.json").read_text())
    assert extended["num_experts"] == 3 and extended["language_to_group"][new] == 2
    assert report["new"]["after"] < report["new"]["before"]
    for lang in old:  # frozen: every old language scores exactly as before
        assert report["old"][lang]["after"] == report["old"][lang]["before"]
    assert report["old_mean"]["change_percent"] == 0.0
    assert f"{new} (new)" in proc.stdout
    # a language the model already has is refused, and nothing is written
    again = tmp_path / "again"
    bad = run_gts("adapt", "--checkpoint", str(tmp_path / "stage1"), "--lang", old[0], "--data",
                  str(gts_setup["data"]), "--out", str(again), check=False)
    assert_one_line_error(bad, f"--lang {old[0]} is already in the model")
    assert not again.exists()
