"""The benchmark harnesses run end to end and report what they measured (figures are not
asserted: speed goals are checked by reading the benchmarks, not by timed tests)."""
import json

import pytest

from tests.conftest import run_gts


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_bench_train_reports_a_same_run_ratio(tmp_path):
    out = run_gts("bench", "train", "--preset", "tiny", "--experts", "2", "--steps", "3",
                  "--micro-batch-size", "2", "--seq-length", "32", "--work-dir", str(tmp_path))
    result = last_json(out.stdout)
    assert result["moe_layers"] == [1] and result["steps_measured"] == 3
    assert result["gts_active_parameters"] - result["dense_parameters"] == 2 * 64  # the router only
    assert abs(result["ratio"] - result["gts_step_s"] / result["dense_step_s"]) < 0.02
    assert list(tmp_path.iterdir()) == []  # its temporary runs are gone


def test_bench_data_times_every_phase(tmp_path):
    result = last_json(run_gts("bench", "data", "--work-dir", str(tmp_path)).stdout)
    assert result["languages"] == 12 and result["tokens"] > 10_000_000
    assert result["total_s"] >= result["download_s"] + result["corpus_s"] + result["prepare_s"] - 0.01
    assert result["cached_rerun_s"] < result["total_s"]


def test_bench_plan_reports_time_and_recovery(tmp_path):
    result = last_json(run_gts("bench", "plan", "--languages", "24", "--groups", "4", "--sketch-size", "256",
                               "--work-dir", str(tmp_path)).stdout)
    assert result["languages"] == 24 and result["adjusted_rand_index"] == 1.0 and result["seconds"] > 0


def test_bench_probes_compares_the_fleet_with_one_probe(tmp_path):
    result = last_json(run_gts("bench", "probes", "--preset", "tiny", "--languages", "2", "--steps", "2",
                               "--seq-length", "32", "--work-dir", str(tmp_path), timeout=600).stdout)
    assert result["slots"] >= 1 and result["fleet_s"] > 0 and result["one_probe_alone_s"] > 0
    assert abs(result["ideal_s"] - result["one_probe_in_fleet_s"] * -(-2 // result["slots"])) < 0.05
    assert result["fleet_s"] > result["ray_start_s"] > 0
    # two 4096-float sketches (one per layer) and a small JSON: kilobytes, not the model
    assert 2 * 4096 * 4 < result["bytes_per_language"] < 2 * 4096 * 4 + 8000


def test_bench_dispatch_reports_every_method_and_ratio():
    result = last_json(run_gts("bench", "dispatch", "--hidden", "64,128", "--tokens", "256", "--groups", "4",
                               "--repeats", "2").stdout)
    assert result["extension"] is True and len(result["rows"]) == 2
    for row in result["rows"]:
        for method in ("copy", "copy_new", "group_permute", "group_permute_no_pool", "megatron_permute",
                       "argsort_index_select"):
            assert row[f"{method}_gbps"] > 0
        assert row["vs_megatron"] == pytest.approx(row["group_permute_gbps"] / row["megatron_permute_gbps"], rel=0.02)
    bad = run_gts("bench", "dispatch", "--hidden", "0", check=False)
    assert bad.returncode != 0 and "positive integers" in bad.stderr
