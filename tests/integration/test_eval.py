"""`gts eval`: an expanded GtS model scores exactly like its dense base under both routings; bad
requests stop with one line and write nothing."""
from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import assert_one_line_error, run_gts


def _eval(setup, tmp_path, checkpoint, name, *extra):
    out = tmp_path / f"{name}.json"
    run_gts("eval", "--checkpoint", str(checkpoint), "--data", str(setup["data"]), "--out", str(out),
            "--window", "32", "--stride", "16", *extra)
    return json.loads(out.read_text())


def test_expanded_model_scores_like_its_dense_base_under_group_and_learned_routing(gts_setup, tmp_path):
    dense = _eval(gts_setup, tmp_path, gts_setup["base"], "dense")
    group = _eval(gts_setup, tmp_path, gts_setup["moe"], "group")
    learned = _eval(gts_setup, tmp_path, gts_setup["moe"], "learned", "--routing", "learned")
    assert dense["routing"] is None and group["routing"] == "group" and learned["routing"] == "learned"
    assert set(dense["languages"]) == set(json.loads((gts_setup["plan"]).read_text())["languages"])
    for lang, d in dense["languages"].items():
        assert d["tokens"] > 100 and 1 < d["perplexity"] < 256  # better than uniform over 256 ids
        # every expert is a copy of the dense MLP: group routing (weight 1) and top-2 softmax
        # routing (weights summing to 1) both compute the dense function
        assert group["languages"][lang]["perplexity"] == pytest.approx(d["perplexity"], rel=1e-4)
        assert learned["languages"][lang]["perplexity"] == pytest.approx(d["perplexity"], rel=1e-4)
        assert group["languages"][lang]["expert"] in (0, 1)
    # one expert per token: active = the dense model plus the routers (2 experts x hidden 64, 1 layer)
    assert group["parameters"]["active"] == dense["parameters"]["total"] + 2 * 64 * 1 < group["parameters"]["total"]
    assert dense["mean_perplexity"] == pytest.approx(np.mean([d["perplexity"] for d in dense["languages"].values()]))


def test_a_language_outside_the_plan_is_refused_or_given_its_nearest_group(gts_setup, tmp_path):
    plan = json.loads(gts_setup["plan"].read_text())
    three = {**plan, "languages": plan["languages"][:3],
             "language_to_group": {k: plan["language_to_group"][k] for k in plan["languages"][:3]}}
    if sorted(set(three["language_to_group"].values())) != [0, 1]:
        pytest.skip("the first three languages do not cover both families")
    (tmp_path / "plan3.json").write_text(json.dumps(three))
    run_gts("expand", "--dense", str(gts_setup["base"]), "--plan", str(tmp_path / "plan3.json"),
            "--out", str(tmp_path / "moe3"))
    outsider = plan["languages"][3]
    out = tmp_path / "refused.json"
    proc = run_gts("eval", "--checkpoint", str(tmp_path / "moe3"), "--data", str(gts_setup["data"]), "--out",
                   str(out), check=False)
    assert_one_line_error(proc, f"{outsider} not in the plan", "--unknown-language nearest")
    assert not out.exists()
    near = _eval(gts_setup, tmp_path, tmp_path / "moe3", "near", "--languages", outsider,
                 "--unknown-language", "nearest")
    choice = near["languages"][outsider]["nearest_group"]
    scores = {int(g): p for g, p in choice["valid_perplexity"].items()}
    assert sorted(scores) == [0, 1] and choice["chosen"] == min(scores, key=scores.get)


@pytest.mark.parametrize("args, fragments", [
    (["--languages", "xx"], ["--languages: xx not in"]),
    (["--window", "4096"], ["--window 4096 exceeds the model's max_seq_length 128"]),
    (["--window", "16", "--stride", "32"], ["--stride 32 is longer than --window 16"]),
    (["--routing", "learned", "--checkpoint-is-dense"], ["is a dense model without routers"]),
])
def test_bad_eval_requests_stop_with_one_line(gts_setup, tmp_path, args, fragments):
    checkpoint = gts_setup["base"] if "--checkpoint-is-dense" in args else gts_setup["moe"]
    args = [a for a in args if a != "--checkpoint-is-dense"]
    out = tmp_path / "eval.json"
    out.write_text("an earlier result\n")
    proc = run_gts("eval", "--checkpoint", str(checkpoint), "--data", str(gts_setup["data"]), "--out", str(out),
                   *args, check=False)
    assert_one_line_error(proc, *fragments)
    assert out.read_text() == "an earlier result\n"  # nothing overwritten
