"""`gts run RECIPE` from a user's side: a corpus folder of 4 languages and a tiny Llama saved with
`save_pretrained` go through import-hf, prepare, probe, plan, expand, stage 1, stage 2, eval and
export-hf; the export loads with transformers; a kill -9 mid-stage then `gts run` again ends bit
for bit where an unbroken run does; `gts run status` is right at each point; bad recipes stop
with one line and write nothing."""
from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import TINY, assert_one_line_error, gts_cmd, gts_env, kill_tree, run_gts

WORDS = {"en": "the cat sat on a mat and the dog ran to the park".split(),
         "de": "der Hund lief in den Park und die Katze sass auf der Matte".split(),
         "fr": "le chat est sur le tapis et le chien court au parc".split(),
         "es": "el gato se sienta en la alfombra y el perro corre al parque".split()}

RECIPE = """\
run_dir: run
corpus: corpus
languages: [de, en, es, fr]
base: {hf: hf-model}
prepare: {valid_fraction: 0.05, test_fraction: 0.05}
set: [train.seq_length=32, train.micro_batch_size=4, train.global_batch_size=8, train.save_interval=4]
probe: {steps: 2, tokens_per_step: 256, seq_length: 32, micro_batch_size: 4, executor: process, exact: true}
plan: {k: 2, top_n: 1}
train: {steps: 16, learned_steps: 4}
eval: {max_tokens: 256, window: 32}
export_hf: {}
"""


def make_user_folder(root: Path) -> Path:
    """What a user brings: corpus/<lang>.txt (300 lines each), a tiny Llama with its tokenizer
    saved by transformers, and recipe.yaml naming them (relative paths)."""
    import torch
    import transformers as tf
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    rng = random.Random(0)
    lines = {lang: [" ".join(rng.choice(words) for _ in range(rng.randint(6, 14))) for _ in range(300)]
             for lang, words in WORDS.items()}
    (root / "corpus").mkdir(parents=True)
    for lang, text in lines.items():
        (root / "corpus" / f"{lang}.txt").write_text("\n".join(text) + "\n")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([line for text in lines.values() for line in text],
                                  trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    torch.manual_seed(0)
    config = tf.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=32, intermediate_size=64,
                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                            max_position_embeddings=128, tie_word_embeddings=False)
    tf.LlamaForCausalLM(config).save_pretrained(str(root / "hf-model"))
    tokenizer.save(str(root / "hf-model" / "tokenizer.json"))
    (root / "hf-model" / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    (root / "recipe.yaml").write_text(RECIPE)
    return root / "recipe.yaml"


def status(recipe: Path) -> dict[str, str]:
    """stage -> state, from `gts run status`."""
    out = run_gts("run", "status", str(recipe)).stdout
    return {line.split()[0]: line.split()[1] for line in out.splitlines() if line.strip()}


def final_bytes(run: Path) -> dict[str, str]:
    """SHA-256 of every file of the final checkpoint and of the exported model's weights, less what
    torch's DCP draws at random on every save: the save_id in ``.metadata`` (and that file's
    checksum in meta.json)."""
    final = run / "learned" / "checkpoints"
    folder = final / (final / "latest").read_text().strip()
    digests = {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in folder.iterdir()
               if f.name not in (".metadata", "meta.json")}
    meta = json.loads((folder / "meta.json").read_text())
    meta["files"].pop(".metadata")
    digests["meta.json"] = json.dumps(meta, sort_keys=True)
    digests["hf"] = hashlib.sha256((run / "hf" / "model.safetensors").read_bytes()).hexdigest()
    return digests


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    recipe = make_user_folder(tmp_path_factory.mktemp("user"))
    assert set(status(recipe).values()) == {"pending"}
    proc = run_gts("run", str(recipe), timeout=900)
    assert "[9/9] export done" in proc.stdout
    return recipe


@pytest.mark.slow
def test_a_recipe_takes_an_hf_model_and_a_corpus_to_an_exported_gts_model(finished_run):
    import transformers as tf

    run = finished_run.parent / "run"
    assert status(finished_run) == {name: "done" for name in ("import", "data", "probe", "plan", "expand", "group",
                                                              "learned", "eval", "export")}
    scores = json.loads((run / "eval" / "gts.json").read_text())
    assert sorted(scores["languages"]) == ["de", "en", "es", "fr"]
    model = tf.AutoModelForCausalLM.from_pretrained(str(run / "hf"), trust_remote_code=True)
    tokenizer = tf.AutoTokenizer.from_pretrained(str(run / "hf"))
    ids = tokenizer("the cat sat on a mat", return_tensors="pt").input_ids
    assert model(ids).logits.shape == (1, ids.shape[1], tokenizer.vocab_size)
    # run again: every stage is done with the same inputs, so nothing runs
    again = run_gts("run", str(finished_run))
    assert again.stdout.count("done before, skipped") == 9


@pytest.mark.slow
def test_a_kill_mid_stage_then_run_again_ends_bit_for_bit_like_the_unbroken_run(finished_run):
    run = finished_run.parent / "run"
    unbroken = final_bytes(run)
    proc = subprocess.Popen(gts_cmd("run", str(finished_run), "--from", "group"), env=gts_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = run / "group" / "checkpoints" / "latest"
    deadline, saved = time.time() + 300, None
    # kill once stage 1 has saved step 4 or 8 of its 12 (its steps take milliseconds: a slow poll
    # on a busy machine can miss step 4's checkpoint before step 8's replaces it)
    while saved not in ("iter_0000004", "iter_0000008") and time.time() < deadline:
        assert proc.poll() is None, "gts run ended before stage 1 saved a checkpoint before its last"
        saved = latest.read_text().strip() if latest.is_file() else None
        time.sleep(0.02)
    kill_tree(proc)
    proc.wait()
    states = status(finished_run)
    assert states["expand"] == "done" and states["group"] == "interrupted"
    assert {states[name] for name in ("learned", "eval", "export")} == {"changed"}  # they read stage 1
    resumed = run_gts("run", str(finished_run), timeout=600)
    assert "group: stage 1, group routing, 12 steps (resumes)" in resumed.stdout
    step = int(saved.removeprefix("iter_"))
    assert f"at step {step}" in next(line for line in resumed.stdout.splitlines() if line.startswith("resumed from"))
    assert final_bytes(run) == unbroken
    assert set(status(finished_run).values()) == {"done"}


BAD = {  # case: (the recipe line it replaces, or None to add one; the new line; what the error names)
    "unknown field": (None, "shuffle: true", ["unknown field shuffle", "valid fields"]),
    "missing corpus": ("corpus:", "corpus: nowhere", ["corpus:", "nowhere does not exist"]),
    "a stage named twice": (None, "plan: {k: 3}", ["plan", "twice"]),
    "a path that does not exist": ("base:", "base: {hf: no-such-model}", ["base.hf", "no-such-model does not exist"]),
    "two sources of data": (None, "data: corpus", ["exactly one of corpus", "data"]),
    "a probe the command refuses": ("probe:", "probe: {tokens_per_step: 100, seq_length: 32, micro_batch_size: 4}",
                                    ["probe:", "not a multiple"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_bad_recipe_stops_with_one_line_and_writes_nothing(tmp_path, case):
    replaced, line, fragments = BAD[case]
    (tmp_path / "corpus").mkdir()
    (tmp_path / "hf-model").mkdir()
    lines = [line if replaced and old.startswith(replaced) else old for old in RECIPE.splitlines()]
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("\n".join(lines + ([] if replaced else [line])) + "\n")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    for args in (["run", str(recipe)], ["run", str(recipe), "--dry-run"], ["run", "status", str(recipe)]):
        assert_one_line_error(run_gts(*args, check=False), *fragments)
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


SLURM_RECIPE = """\
run_dir: run
data: data
config: {tiny}
base: {{pretrain_steps: 2}}
probe: {{steps: 2, seq_length: 32, sketch_size: 64, tokens_per_step: 256}}
plan: {{k: 2, plots: false}}
slurm: {{probe_nodes: 1, cpus_per_task: 2, ray_object_store_mb: 200}}
"""


@pytest.mark.slurm
@pytest.mark.slow
def test_on_slurm_a_failed_stage_stops_the_afterok_chain_and_a_rerun_resumes_it(slurm, tmp_path):
    """base -> probe (on a Ray cluster the job starts) -> plan, as three chained jobs; rerun with
    the probes as a job array instead (then a job that records the stage), the chain goes on."""
    run_gts("data", "synthetic", "--out", str(tmp_path / "data"), "--languages", "4", "--families", "2",
            "--vocab-size", "256", "--documents", "40", "--document-tokens", "128")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(SLURM_RECIPE.format(tiny=TINY))
    env = {"SLURM_CONF": str(slurm.conf)}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "probes").write_text("a file where the probe stage writes a folder\n")

    def submit() -> list[str]:
        out = run_gts("run", str(recipe), "--launcher", "slurm", "--to", "plan", env=env).stdout
        return [line.split(" -> job ")[1].split()[0] for line in out.splitlines() if " -> job " in line] + [
            line.split("array job ")[1] for line in out.splitlines() if "array job " in line]

    def states() -> dict[str, str]:
        out = run_gts("run", "status", str(recipe), env=env).stdout
        return {line.split()[0]: line.split()[1] for line in out.splitlines()}

    base, probe, plan = submit()  # three jobs, each after the one before
    assert slurm.wait_done(base, 240) == "COMPLETED"
    assert slurm.wait_done(probe, 240) == "FAILED"
    assert slurm.wait_done(plan, 60) == "CANCELLED"  # afterok never satisfied: the chain stops
    now = states()
    assert (now["base"], now["probe"], now["plan"]) == ("done", "failed", "cancelled")
    assert "probes" in run_gts("run", "status", str(recipe), env=env).stdout.splitlines()[1]  # the reason
    probe_log = (tmp_path / "run" / "slurm-logs" / f"gts-probe-{probe}.out").read_text()
    assert "Ray cluster at 127.0.0.1:" in probe_log and "--stage probe --address" in probe_log
    (tmp_path / "run" / "probes").unlink()  # the cause is fixed: run the recipe again, the probes
    recipe.write_text(SLURM_RECIPE.format(tiny=TINY).replace(  # as an array this time
        "probe_nodes: 1, cpus_per_task: 2, ray_object_store_mb: 200", "probe_array: true, cpus_per_task: 2"))
    *jobs, array = submit()
    assert len(jobs) == 2  # base is done: the chain starts at the failed stage (its array job before it)
    assert f"(its languages probe in array job {array})" in run_gts("run", "status", str(recipe), env=env).stdout
    assert [slurm.wait_done(job, 300) for job in (array, *jobs)] == ["COMPLETED"] * 3
    now = states()
    assert (now["base"], now["probe"], now["plan"]) == ("done", "done", "done")
    assert (tmp_path / "run" / "plan" / "plan.json").is_file()
    logs = tmp_path / "run" / "slurm-logs"
    tasks = sorted(logs.glob(f"gts-probe-array-{array}_*.out"))
    assert len(tasks) == 4 and all("exit code 0" in task.read_text() for task in tasks)
    assert "4 of 4 languages already probed" in (tmp_path / "run" / "stages" / "probe.log").read_text()
