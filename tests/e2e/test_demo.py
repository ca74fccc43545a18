"""`gts demo --quick`: the whole pipeline on the demo corpus, interrupted and resumed, ending in a
report; and the bad inputs a user meets with its models (another tokenizer, an empty split)."""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import assert_one_line_error, files_under, gts_cmd, gts_env, interruptible, run_gts

README = "# project\n\n## Results\n\n<!-- demo-results:begin -->\nold numbers\n<!-- demo-results:end -->\n\nrest\n"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    """A quick demo interrupted (SIGINT) once the experiment stage starts, then run again to the
    end with --readme; returns the run directory and both runs' output."""
    root = tmp_path_factory.mktemp("demo")
    run_dir = root / "run"
    env = {**gts_env(), "OMP_NUM_THREADS": "2"}  # the only process: both cores
    first = subprocess.Popen(gts_cmd("demo", "--quick", "--run-dir", str(run_dir)), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, env=env, preexec_fn=interruptible,
                             start_new_session=True)
    lines = []
    for line in first.stdout:
        lines.append(line)
        if line.startswith("dense: pretrain for"):  # the experiment's first arm trains: Ctrl-C, as a terminal
            os.killpg(first.pid, signal.SIGINT)     # sends it, to the demo and the stage it runs
            break
    lines.append(first.stdout.read())
    first.wait(timeout=300)
    base_checkpoints = files_under(run_dir / "base" / "checkpoints")
    (root / "README.md").write_text(README)
    second = run_gts("demo", "--quick", "--run-dir", str(run_dir), "--readme", str(root / "README.md"),
                     timeout=600, env={"OMP_NUM_THREADS": "2"})
    return {"run": run_dir, "root": root, "first": "".join(lines), "first_rc": first.returncode,
            "second": second.stdout + second.stderr, "base_checkpoints": base_checkpoints}


def test_an_interrupted_demo_resumes_without_redoing_finished_stages(quick_demo):
    assert quick_demo["first_rc"] == 130, quick_demo["first"][-2000:]
    assert "Traceback" not in quick_demo["first"]
    assert "[6/9] experiment: dense, gts, random" in quick_demo["first"]
    # the second run skips what the first finished: the corpus, the data, the base, the probes, the
    # plan; it resumes the experiment and runs the rest
    out = quick_demo["second"]
    skipped = [n for n in range(1, 10) if f"[{n}/9] " in out and "done before, skipped" in out.split(f"[{n}/9] ")[1].split("\n")[0]]
    assert skipped == [1, 2, 3, 4, 5], out
    assert "[6/9] experiment: dense, gts, random at equal tokens, 16 steps each, seeds 1, 2 (resumes)" in out
    assert files_under(quick_demo["run"] / "base" / "checkpoints") == quick_demo["base_checkpoints"]
    for n in range(6, 10):
        assert f"[{n}/9] " in out and f"[{n}/9] " + out.split(f"[{n}/9] ")[-1].split(" ")[0] + " done in" in out


def test_the_report_holds_every_result_and_figure(quick_demo):
    run = quick_demo["run"]
    report = (run / "report.md").read_text()
    for heading in ("## Data", "## Probes and plan", "## Results", "## New-language adaptation"):
        assert heading in report
    for figure in ("plan/similarity.png", "plan/deviations.png", "experiment/perplexity.png", "loss_curves.png"):
        assert f"]({figure})" in report and (run / figure).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((run / "experiment" / "summary.json").read_text())
    assert list(summary["arms"]) == ["base", "dense", "gts", "random"] and summary["seeds"] == [1, 2]
    for arm in summary["arms"].values():  # five GtS languages, the sixth (pt) held out for adaptation
        assert sorted(arm["languages"]) == ["de", "en", "es", "fr", "ru"]
        assert len(arm["mean_perplexity"]["values"]) == 2
    assert set(summary["verdicts"]) == {"dense", "random"}
    assert "mean ± std over training seeds 1, 2" in report and "GtS " in report
    mechanism = json.loads((run / "mechanism" / "experiment" / "summary.json").read_text())
    assert list(mechanism["arms"]) == ["base", "dense", "gts", "random"] and "Mechanism check" in report
    for arms in (run / "experiment", run / "mechanism" / "experiment"):  # the recipes' weight, not the paper's
        assert "router_loss_weight: 0.3\n" in (arms / "seed-1" / "gts" / "group" / "config.yaml").read_text()
    assert json.loads((run / "plan" / "families.json").read_text())["family"]["of"]["ru"] == "Indo-European"
    adapt = json.loads((run / "adapt" / "pt" / "adapt.json").read_text())
    assert adapt["language"] == "pt" and adapt["new"]["after"] < adapt["new"]["before"]
    assert abs(adapt["old_mean"]["change_percent"]) <= 1.0
    assert "Machine: " in report and "report" not in report.split("time per stage: ")[1].split(";")[0]
    for stage in ("corpus", "data", "base", "probe", "plan", "experiment", "adapt", "mechanism"):
        assert f"{stage} " in report.split("time per stage: ")[1].split(";")[0], stage
    readme = (quick_demo["root"] / "README.md").read_text()
    assert "old numbers" not in readme and "| gts | " in readme and readme.endswith("rest\n")


def test_data_from_another_tokenizer_or_without_held_out_text_is_refused(quick_demo, tmp_path):
    run = quick_demo["run"]
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for lang in ("de", "en"):  # a small corpus from the demo's own text
        lines = (run / "corpus" / f"{lang}.txt").read_text().split("\n\n")[:40]
        (corpus / f"{lang}.txt").write_text("\n\n".join(lines))
    run_gts("data", "prepare", "--corpus", str(corpus), "--out", str(tmp_path / "own"), "--vocab-size", "600")
    out = tmp_path / "eval.json"
    proc = run_gts("eval", "--checkpoint", str(run / "base"), "--data", str(tmp_path / "own"), "--out", str(out),
                   check=False)
    assert_one_line_error(proc, "is tokenized with another tokenizer", "--tokenizer")
    run_gts("data", "prepare", "--corpus", str(corpus), "--out", str(tmp_path / "same"),
            "--tokenizer", str(run / "data" / "tokenizer.model"), "--test-fraction", "0")
    proc = run_gts("eval", "--checkpoint", str(run / "base"), "--data", str(tmp_path / "same"), "--out", str(out),
                   check=False)
    assert_one_line_error(proc, "has 0 test tokens, nothing to evaluate")
    assert not out.exists()


def test_the_demo_recipe_run_by_name_elsewhere_makes_the_same_plan(quick_demo, tmp_path):
    """Same seeds, another run directory: `gts run demo-quick --to plan` (the packaged recipe, its
    run_dir relative to the current folder) gives the same base, probes and so plan as the demo."""
    run_gts("run", "demo-quick", "--to", "plan", timeout=600, env={"OMP_NUM_THREADS": "2"}, cwd=tmp_path)
    again = tmp_path / "runs" / "demo-quick"
    first, second = (json.loads((run / "plan" / "plan.json").read_text()) for run in (quick_demo["run"], again))
    for key in ("language_to_group", "moe_layers", "group_to_expert"):
        assert first[key] == second[key], key
    sketches = [{k: v for k, v in plan["inputs"]["checksums"].items() if k.endswith(".safetensors")}
                for plan in (first, second)]
    assert sketches[0] == sketches[1] and len(sketches[0]) == 5  # the probes' deltas, byte for byte
    status = run_gts("run", "status", "demo-quick", cwd=tmp_path).stdout.splitlines()
    assert [line.split()[:2] for line in status] == [[name, "done"] for name in ("corpus", "data", "base", "probe",
                                                                                 "plan")] + [
        [name, "pending"] for name in ("experiment", "adapt", "mechanism", "report")]


def test_a_run_directory_of_one_demo_size_refuses_another(quick_demo):
    before = files_under(quick_demo["run"])
    proc = run_gts("demo", "--full", "--run-dir", str(quick_demo["run"]), check=False)
    assert_one_line_error(proc, "holds a demo run with --quick", "use another --run-dir")
    assert files_under(quick_demo["run"]) == before
