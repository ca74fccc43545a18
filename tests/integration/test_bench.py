"""The benchmark harnesses run end to end and report what they measured (figures are not
asserted: speed goals are checked by reading the benchmarks, not by timed tests)."""
import json
import re
import signal
import subprocess

import pytest

from gts_megatron.config import ProbeConfig, build_options
from gts_megatron.config.bench import BenchTrainConfig
from gts_megatron.errors import GtsError
from tests.conftest import assert_one_line_error, gts_cmd, gts_env, interruptible, run_gts


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


ALL_ARMS = ["dense", "gts-alltoall", "gts-group", "gts-placement", "authors-zero", "deepspeed-moe"]
TINY_BENCH = ["--preset", "tiny", "--experts", "2", "--micro-batch-size", "2", "--seq-length", "32"]


@pytest.mark.slow
def test_bench_train_measures_every_arm_at_ep2(tmp_path):
    out = tmp_path / "result.json"
    work = tmp_path / "work"
    proc = run_gts("bench", "train", *TINY_BENCH, "--steps", "3", "--warmup", "0", "--nproc-per-node", "2",
                   "--expert", "2", "--out", str(out), "--work-dir", str(work))
    result = json.loads(out.read_text())
    assert last_json(proc.stdout) == result
    arms = result["arms"]
    assert list(arms) == ALL_ARMS and result["world_size"] == 2 and result["moe_layers"] == [1]
    tokens, peak = result["tokens_per_step"], result["peak_flops_per_device"]
    assert tokens == 2 * 2 * 2 * 32 and peak > 0 and result["peak_measured"]
    for name, arm in arms.items():
        assert arm["min_s"] <= arm["p25_s"] <= arm["median_s"] <= arm["p75_s"] <= arm["max_s"], name
        assert arm["tokens_per_s"] == pytest.approx(tokens / arm["median_s"])
        assert arm["mfu"] == pytest.approx(result["flops_per_token"] * tokens / arm["median_s"] / (2 * peak))
        assert arm["vs_dense"] == pytest.approx(arm["tokens_per_s"] / arms["dense"]["tokens_per_s"])
        assert arm["peak_memory_bytes"] > 4 * result["dense_parameters"] / 2, name  # weights, grads, Adam
        split = arm["split_s"]
        assert set(split) == {"attention", "dense_mlp", "moe_dispatch", "experts", "other"}
        assert split["attention"] > 0 and split["dense_mlp"] > 0, name
        moe = name != "dense"
        assert (split["experts"] > 0) == moe and (split["moe_dispatch"] > 0) == moe, (name, split)
    # the same weights and the same first batch (placement deals the same samples out by language):
    # group routing through expanded experts, whole-batch or per token, computes the dense function
    first = arms["dense"]["first_loss"]
    for name in ("gts-alltoall", "gts-group", "gts-placement", "authors-zero"):
        assert arms[name]["first_loss"] == pytest.approx(first, rel=1e-5), name
    assert arms["deepspeed-moe"]["first_loss"] != pytest.approx(first, rel=1e-5)  # its gate weighs experts
    assert result["ratios"]["gts-placement / authors-zero"] == pytest.approx(
        arms["gts-placement"]["tokens_per_s"] / arms["authors-zero"]["tokens_per_s"])
    assert "| gts-placement |" in proc.stdout and "tokens/s gts-group / dense" in proc.stdout
    assert list(work.iterdir()) == []  # the temporary models and data are gone


def test_bench_train_sequential_arms_in_one_process(tmp_path):
    """--sequential (models too large to hold together): each arm alone, then freed."""
    result = last_json(run_gts("bench", "train", *TINY_BENCH, "--steps", "2", "--warmup", "0", "--sequential",
                               "--arms", "gts-group,dense", "--peak-tflops", "0.5").stdout)
    arms = result["arms"]
    assert list(arms) == ["dense", "gts-group"] and result["world_size"] == 1
    assert not result["peak_measured"] and result["peak_flops_per_device"] == 0.5e12
    assert arms["gts-group"]["first_loss"] == pytest.approx(arms["dense"]["first_loss"], rel=1e-5)
    assert arms["gts-group"]["peak_memory_bytes"] > arms["dense"]["peak_memory_bytes"]  # experts + router
    assert list(result["ratios"]) == ["gts-group / dense"]


@pytest.mark.parametrize("flags, fragments", [
    (["--steps", "0"], ["steps 0", "at least 1 timed step"]),
    (["--expert", "2"], ["expert 2 does not divide the 1 processes"]),
])
def test_bench_train_refuses_meaningless_runs(tmp_path, flags, fragments):
    out = tmp_path / "result.json"
    proc = run_gts("bench", "train", *TINY_BENCH, *flags, "--out", str(out), "--work-dir", str(tmp_path / "w"),
                   check=False)
    assert_one_line_error(proc, *fragments)
    assert not out.exists() and not any((tmp_path / "w").glob("*"))


@pytest.mark.parametrize("values, fragment", [
    ({"nproc_per_node": 2, "expert": 2, "experts": 3}, "3 experts cannot be spread evenly over 2 expert-parallel"),
    ({"nproc_per_node": 2, "tensor": 4}, "tensor 4 does not divide the 2 processes"),
    ({"arms": ["gts-placement"]}, "gts-placement needs expert > 1"),
    ({"arms": ["dense", "zero"]}, "--arms"),
    ({"arms": []}, "arms is empty"),
    ({"peak_tflops": 0}, "peak_tflops 0: a peak must be a positive number"),
    ({"nproc_per_node": 2, "pipeline": 2, "arms": ["dense", "authors-zero"]},
     "arms authors-zero: the DeepSpeed arms have no pipeline parallelism"),
    ({"nproc_per_node": 3, "pipeline": 2}, "tensor 1 x pipeline 2 = 2 does not divide the 3 processes"),
    ({"nproc_per_node": 2, "pipeline": 2, "expert": 2}, "expert 2 does not divide the 1 processes of a pipeline stage"),
    ({"nproc_per_node": 3, "pipeline": 3}, "pipeline 3 does not divide the 4 layers of preset small"),
    ({"nproc_per_node": 2, "pipeline": 2, "pipeline_layers": [3, 2]},
     "pipeline_layers [3, 2] must give each of the 2 stages at least one layer and sum to the 4 layers"),
    ({"preset": "huge"}, "--preset: unknown preset 'huge'; valid presets: llama-1b, llama-70b, small, tiny"),
    ({"nproc_per_node": 2, "tensor": 2, "global_batch_size": 6, "micro_batch_size": 2},
     "global_batch_size 6 must be a multiple of micro_batch_size 2 x DeepSpeed data-parallel size 2"),
])
def test_bench_train_options_refuse_impossible_layouts(values, fragment):
    with pytest.raises(GtsError, match=re.escape(fragment)):
        build_options(BenchTrainConfig, values)


def test_bench_train_at_pp2_reports_the_idle_share_beside_tokens_per_s(tmp_path):
    """Two pipeline stages (the MoE layer on the second): megatron's arms only, the expansion still
    computes the dense function, and the schedule's idle share is measured beside the expected bubble."""
    proc = run_gts("bench", "train", *TINY_BENCH, "--steps", "2", "--warmup", "0", "--nproc-per-node", "2",
                   "--pipeline", "2", "--peak-tflops", "0.5")
    result = last_json(proc.stdout)
    arms = result["arms"]
    assert list(arms) == ["dense", "gts-alltoall", "gts-group"] and result["options"]["pipeline"] == 2
    assert result["micro_batches"] == 4 and result["expected_bubble"] == pytest.approx(1 / 5)
    for name, arm in arms.items():
        assert 0 < arm["schedule_idle"] < 1, name
        assert arm["tokens_per_s"] == pytest.approx(result["tokens_per_step"] / arm["median_s"])
    for name in ("gts-alltoall", "gts-group"):
        assert arms[name]["first_loss"] == pytest.approx(arms["dense"]["first_loss"], rel=1e-5), name
    assert "PP 2" in proc.stdout and "pipeline bubble expected (p - 1) / (m + p - 1) = 20%" in proc.stdout


def test_bench_train_interrupted_reports_nothing(tmp_path):
    """Ctrl-C in the middle of the timed steps: exit 130, no figures, no temporary files left."""
    out = tmp_path / "result.json"
    proc = subprocess.Popen(gts_cmd("bench", "train", *TINY_BENCH, "--arms", "dense", "--warmup", "0", "--steps", "2000",
                                    "--out", str(out),
                                    "--work-dir", str(tmp_path / "w")),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=gts_env(),
                            preexec_fn=interruptible)
    for line in proc.stdout:
        if line.startswith("step 10/"):  # timed: no warm-up steps are asked for
            proc.send_signal(signal.SIGINT)
            break
    rest = proc.communicate(timeout=120)[0]
    assert proc.returncode == 130, rest
    assert not out.exists() and not any((tmp_path / "w").glob("*"))
    assert "Traceback" not in rest


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
    # two float32 sketches of the default size (one per layer) and a small JSON: kilobytes, not the model
    size = ProbeConfig.model_fields["sketch_size"].default
    assert 2 * size * 4 < result["bytes_per_language"] < 2 * size * 4 + 8000


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


def test_bench_train_a_diverged_arm_fails_the_run():
    """A non-finite loss in any arm, at any step, fails the whole run (on every rank alike)."""
    import types

    import torch
    import torch.distributed as dist

    from gts_megatron.bench.train.worker import _timed_steps

    class Arm:  # a stand-in whose loss turns NaN at its third step: the harness's check, not an engine's
        def __init__(self, nan_at):
            self.steps, self.nan_at = 0, nan_at

        def step(self):
            self.steps += 1
            return 0.001, float("nan") if self.steps == self.nan_at else 1.0

    dist.init_process_group("gloo", rank=0, world_size=1, store=dist.HashStore())
    try:
        runtime = types.SimpleNamespace(device=torch.device("cpu"), is_main=False)
        opts = types.SimpleNamespace(warmup=1, steps=4)
        with pytest.raises(GtsError, match="arm b: the loss was not finite"):
            _timed_steps({"a": (Arm(0), 0, 1.0), "b": (Arm(3), 0, 1.0)}, runtime, opts)
        times = _timed_steps({"a": (Arm(0), 0, 1.0)}, runtime, opts)
        assert len(times["a"]) == 4  # timed steps only
    finally:
        dist.destroy_process_group()
