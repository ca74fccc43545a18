"""The probe fleet on a real local Ray: planted families come back, sketches match exact deltas,
DeepSpeed ZeRO matches megatron, a killed driver or crashed worker loses nothing finished."""
import json
import re
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from gts_megatron.plan.families import adjusted_rand_index
from gts_megatron.probe.store import read_sketches
from tests.conftest import TINY, assert_one_line_error, gts_cmd, gts_env, kill_tree, run_gts

# the paper's 8e-6 is for billion-parameter models, these have 90k; 1k tokens a step, not 16k
LR = ["--lr", "1e-3", "--tokens-per-step", "1024"]


@pytest.fixture(scope="module")
def probed(families_data, tmp_path_factory):
    """A dense base on the families data, probed exactly and with sketches."""
    root = tmp_path_factory.mktemp("probed")
    run_gts("pretrain", "--config", TINY, "--run-dir", str(root / "base"),
            "--set", "data.kind=indexed", "--set", f"data.path={families_data}", "--set", "train.steps=10")
    base = str(root / "base" / "checkpoints")
    common = ["--base", base, "--data", str(families_data), *LR]
    run_gts("probe", *common, "--exact", "--out", str(root / "exact"), timeout=600)
    run_gts("probe", *common, "--out", str(root / "sketched"), timeout=600)
    families = json.loads((families_data / "manifest.json").read_text())["families"]
    return {"root": root, "base": base, "common": common, "families": families, "data": families_data}


def cosine(store, a, b, layers=(0, 1)):
    x, y = read_sketches(store, a, list(layers)), read_sketches(store, b, list(layers))
    return float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))


def test_exact_probes_place_every_language_nearest_its_family(probed):
    languages, families = sorted(probed["families"]), probed["families"]
    for lang in languages:
        own = [cosine(probed["root"] / "exact", lang, o) for o in languages if o != lang and families[o] == families[lang]]
        other = [cosine(probed["root"] / "exact", lang, o) for o in languages if families[o] != families[lang]]
        assert min(own) > max(other), (lang, own, other)


def test_sketches_estimate_the_exact_cosines(probed):
    languages = sorted(probed["families"])
    errors = [abs(cosine(probed["root"] / "sketched", a, b) - cosine(probed["root"] / "exact", a, b))
              for i, a in enumerate(languages) for b in languages[i + 1:]]
    assert max(errors) <= 0.02, errors
    result = json.loads((probed["root"] / "sketched" / "syn00.json").read_text())
    assert result["sketch"] == {"kind": "countsketch", "size": 16384, "seed": 1234}
    assert len(result["delta_norm_ffn"]) == len(result["delta_norm_att"]) == 2


def test_plan_from_probes_recovers_the_planted_families(probed, tmp_path):
    run_gts("plan", "--probes", str(probed["root"] / "sketched"), "--k", "2", "--similarity-layers", "all",
            "--out", str(tmp_path))
    plan = json.loads((tmp_path / "plan.json").read_text())
    names = sorted(probed["families"])
    truth = [sorted(set(probed["families"].values())).index(probed["families"][n]) for n in names]
    assert adjusted_rand_index(truth, [plan["language_to_group"][n] for n in names]) == 1.0


@pytest.mark.slow
def test_gradient_probes_with_accumulated_tokens_recover_the_families(probed, tmp_path):
    """The first-order probe over 4 micro-batches a step: no weight moves, the families still come
    back, the delta is -lr x steps x the mean gradient (its norm scales with --lr), and probing
    again gives the same bytes."""
    runs = {}
    for name, lr in (("1e-3", "1e-3"), ("2e-3", "2e-3"), ("again", "1e-3")):
        runs[name] = tmp_path / name
        run_gts("probe", "--base", probed["base"], "--data", str(probed["data"]), "--lr", lr, "--delta", "gradient",
                "--tokens-per-step", "512", "--micro-batch-size", "2", "--seq-length", "64",
                "--executor", "process", "--out", str(runs[name]), timeout=600)
    for lang in probed["families"]:  # the same inputs give the same bytes: a rerun plans the same
        assert (runs["again"] / f"{lang}.safetensors").read_bytes() == (runs["1e-3"] / f"{lang}.safetensors").read_bytes()
    result = json.loads((runs["1e-3"] / "syn00.json").read_text())
    assert result["inputs"]["sequences_per_step"] == 8 and result["inputs"]["delta"] == "gradient"
    doubled = json.loads((runs["2e-3"] / "syn00.json").read_text())
    for a, b in zip(result["delta_norm_ffn"], doubled["delta_norm_ffn"]):
        assert abs(b - 2 * a) <= 1e-5 * b
    out = run_gts("plan", "--probes", str(runs["1e-3"]), "--k", "2", "--similarity-layers", "all",
                  "--out", str(tmp_path / "plan")).stdout
    # active parameters of both stages: one expert per token under group routing, top-2 once learned
    grouped, learned = re.search(r"active per token ([\d.]+)M under group routing \(stage 1\), ([\d.]+)M under "
                                 r"learned top-2 \(stage 2\)", out).groups()
    assert float(learned) > float(grouped)
    plan = json.loads((tmp_path / "plan" / "plan.json").read_text())
    names = sorted(probed["families"])
    truth = [sorted(set(probed["families"].values())).index(probed["families"][n]) for n in names]
    assert adjusted_rand_index(truth, [plan["language_to_group"][n] for n in names]) == 1.0


def test_probe_help_lists_the_accumulation_options_and_refuses_an_uneven_token_count(probed, tmp_path):
    help_text = run_gts("probe", "--help").stdout
    assert "--tokens-per-step" in help_text and "--delta" in help_text
    proc = run_gts("probe", "--base", probed["base"], "--data", str(probed["data"]), "--tokens-per-step", "1000",
                   "--out", str(tmp_path / "p"), check=False)
    assert_one_line_error(proc, "tokens_per_step 1000 is not a multiple of seq_length x micro_batch_size = 256",
                          "use 1024")
    assert not (tmp_path / "p").exists()


def test_deepspeed_zero3_probe_matches_the_megatron_probe(probed, tmp_path):
    run_gts("probe", *probed["common"], "--languages", "syn00", "--engine", "deepspeed", "--zero-stage", "3",
            "--out", str(tmp_path), timeout=600)
    mine, theirs = (json.loads((d / "syn00.json").read_text()) for d in (tmp_path, probed["root"] / "sketched"))
    for key in ("delta_norm_ffn", "delta_norm_att"):
        assert np.allclose(mine[key], theirs[key], rtol=1e-5), key
    x, y = read_sketches(tmp_path, "syn00", [0, 1]), read_sketches(probed["root"] / "sketched", "syn00", [0, 1])
    assert x @ y / np.linalg.norm(x) / np.linalg.norm(y) > 0.9999


def test_a_probe_over_two_pipeline_stages_gives_the_one_process_result(probed, tmp_path):
    """--pipeline 2: two processes, one layer each, summarised apart and written by rank 0; the
    update probe equals the fleet's one-process result, the gradient probe its own one-process run."""
    def probe(out, *extra):
        run_gts("probe", *probed["common"], "--languages", "syn00", "--executor", "process", "--out", str(out),
                *extra, timeout=600)
        return json.loads((out / "syn00.json").read_text()), read_sketches(out, "syn00", [0, 1])

    runs = {"update": (probed["root"] / "sketched", tmp_path / "update", []),
            "gradient": (tmp_path / "gradient-one", tmp_path / "gradient", ["--delta", "gradient"])}
    for kind, (one_dir, pp2_dir, extra) in runs.items():
        one = probe(one_dir, *extra) if kind == "gradient" else (
            json.loads((one_dir / "syn00.json").read_text()), read_sketches(one_dir, "syn00", [0, 1]))
        two = probe(pp2_dir, *extra, "--pipeline", "2")
        for key in ("delta_norm_ffn", "delta_norm_att"):
            assert np.allclose(two[0][key], one[0][key], rtol=1e-4), (kind, key, two[0][key], one[0][key])
        assert two[1] @ one[1] / np.linalg.norm(two[1]) / np.linalg.norm(one[1]) > 0.9999, kind
        assert two[0]["inputs"] == one[0]["inputs"]  # the layout is not an input: a rerun at PP=1 skips it


def test_killed_driver_rerun_probes_only_the_unfinished(probed, tmp_path):
    args = ["probe", *probed["common"], "--out", str(tmp_path)]
    proc = subprocess.Popen(gts_cmd(*args), env=gts_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not list(tmp_path.glob("*.json")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert proc.poll() is None, "the fleet ended before it could be killed"
    kill_tree(proc)
    proc.wait(timeout=60)
    finished = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.json")}
    assert 1 <= len(finished) < 4
    rerun = run_gts(*args, timeout=600)
    assert f"{len(finished)} of 4 languages already probed" in rerun.stdout
    assert f"probing {4 - len(finished)} languages" in rerun.stdout
    assert all((tmp_path / name).stat().st_mtime_ns == mtime for name, mtime in finished.items())
    assert len(list(tmp_path.glob("*.json"))) == 4


def test_a_crashed_worker_is_retried(probed, tmp_path):
    run_gts("probe", *probed["common"], "--languages", "syn01,syn02", "--out", str(tmp_path),
            env={"GTS_PROBE_FAULT": "crash:syn01"}, timeout=600)
    assert (tmp_path / ".crashed-syn01").exists()  # the first attempt died ...
    assert (tmp_path / "syn01.json").exists() and (tmp_path / "syn02.json").exists()  # ... the retry finished


def test_a_failing_language_is_reported_and_the_others_kept(probed, tmp_path):
    proc = run_gts("probe", *probed["common"], "--languages", "syn01,syn02,syn03", "--out", str(tmp_path),
                   env={"GTS_PROBE_FAULT": "raise:syn02"}, timeout=600, check=False)
    assert proc.returncode == 2
    assert "syn02 FAILED" in proc.stdout and "Traceback" in proc.stdout and "injected failure" in proc.stdout
    assert "1 probe(s) failed (syn02)" in proc.stderr
    assert sorted(p.name for p in tmp_path.glob("*.json")) == ["syn01.json", "syn03.json"]


@pytest.mark.parametrize("case, fragments", [
    ("language", ["data.languages: xx not in"]),
    ("moe_base", ["is an MoE model; probes start from the dense base"]),
    ("address", ["--address 127.0.0.1:9", "no Ray head answers there"]),
    ("pipeline", ["--pipeline 3 does not divide the base's 2 layers"]),
])
def test_bad_probe_input_is_refused_quickly(probed, gts_setup, tmp_path, case, fragments):
    args = ["probe", "--base", probed["base"], "--data", str(probed["data"]), "--out", str(tmp_path / "p")]
    if case == "language":
        args += ["--languages", "syn00,xx"]
    elif case == "moe_base":
        args[2] = str(gts_setup["moe"])
    elif case == "address":
        args += ["--address", "127.0.0.1:9"]
    elif case == "pipeline":
        args += ["--pipeline", "3"]
    started = time.time()
    assert_one_line_error(run_gts(*args, check=False), *fragments)
    assert time.time() - started < 30
    assert not (tmp_path / "p").exists()


@pytest.fixture
def ray_head():
    """A real Ray head started with `ray start` (as users run clusters), on loopback only; torn
    down by killing exactly its own processes (`ray stop` would kill every Ray on the machine)."""
    import shutil
    import sys
    import tempfile

    import psutil

    from gts_megatron.runtime.distributed import free_port

    temp = tempfile.mkdtemp(prefix="gtsray", dir="/tmp")  # short: Ray's unix sockets live under it
    port, dashboard = free_port(), free_port()
    env = {**gts_env(), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_AUTH_MODE": "disabled",
           "RAY_USAGE_STATS_ENABLED": "0"}
    ray = str(Path(sys.executable).parent / "ray")
    subprocess.run([ray, "start", "--head", f"--port={port}", "--num-cpus=2", "--node-ip-address=127.0.0.1",
                    "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
                    f"--temp-dir={temp}", "--object-store-memory=300000000"],
                   env=env, check=True, timeout=180, capture_output=True)
    yield {"address": f"127.0.0.1:{port}", "dashboard": f"http://127.0.0.1:{dashboard}", "env": env, "ray": ray}
    mine = [p for p in psutil.process_iter(["cmdline"])
            if any(temp in arg or f":{port}" in arg for arg in (p.info["cmdline"] or []))]
    family = {p.pid: p for p in mine}
    for p in mine:
        try:
            family.update({c.pid: c for c in p.children(recursive=True)})
        except psutil.NoSuchProcess:
            pass
    for p in family.values():
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(family.values()), timeout=30)
    shutil.rmtree(temp, ignore_errors=True)


def test_probes_on_an_existing_cluster_by_address_and_by_ray_job_submit(probed, ray_head, tmp_path):
    import sys

    common = [*probed["common"], "--out", str(tmp_path)]
    run_gts("probe", *common, "--languages", "syn00", "--address", ray_head["address"], env=ray_head["env"],
            timeout=600)
    assert (tmp_path / "syn00.json").exists()
    job = subprocess.run([ray_head["ray"], "job", "submit", "--address", ray_head["dashboard"], "--",
                          sys.executable, "-m", "gts_megatron.cli", "probe", *common, "--languages", "syn01",
                          "--address", "auto"], env=ray_head["env"], capture_output=True, text=True, timeout=600)
    assert job.returncode == 0, job.stdout + job.stderr
    assert "succeeded" in job.stdout and (tmp_path / "syn01.json").exists()


def test_bench_stability_compares_the_seeds_plans(probed, tmp_path):
    """Gradient probes of two seeds (other samples, other sketch hash) agree on the families."""
    args = ["bench", "stability", "--base", probed["base"], "--data", str(probed["data"]), "--lr", "1e-3",
            "--delta", "gradient", "--tokens-per-step", "512", "--seq-length", "64", "--executor", "process",
            "--seeds", "1,2", "--k", "2", "--methods", "balanced,agglomerative", "--out", str(tmp_path)]
    out = run_gts(*args, timeout=600).stdout
    result = json.loads((tmp_path / "stability.json").read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seed-1", "seed-2", "stability.json"]
    (pair,) = result["pairs"]
    assert pair["seeds"] == [1, 2] and pair["spearman"] > 0.5
    assert pair["grouping_ari"] == {"balanced": 1.0, "agglomerative": 1.0}
    families = probed["families"]
    planted = sorted(sorted(lang for lang in families if families[lang] == f) for f in set(families.values()))
    for seed in result["seeds"].values():  # both methods find the planted families
        assert [sorted(sorted(g) for g in seed["groups"][m]) for m in ("balanced", "agglomerative")] == [planted] * 2
    assert result["probe"]["tokens_per_probe"] == 10 * 512
    assert "min Spearman" in out
    rerun = run_gts(*args, timeout=600).stdout  # every seed's probes are kept: nothing probed again
    assert "4 of 4 languages already probed" in rerun
    assert json.loads((tmp_path / "stability.json").read_text())["pairs"] == result["pairs"]
