"""`gts import-hf` / `gts export-hf` with tiny random Llama, Mistral and Qwen2 models that
transformers builds here from a config: logits equal transformers', the export restores every
tensor bit for bit, the imported checkpoint loads at TP=2 and its tokenizer feeds the data
pipeline; bad folders are refused in one line."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from tests.conftest import (WORDS, assert_one_line_error, documents, indexed_args, read_metrics, run_gts,
                            write_corpus, write_family_plan)

COMMON = dict(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, rms_norm_eps=1e-5)


def make_hf_model(family: str, out: Path) -> Path:
    """A tiny random HF checkpoint folder of ``family`` (norms and biases random too, so a swapped
    tensor shows); Mistral is saved in shards, Llama with Llama 3 RoPE scaling and untied output."""
    import transformers as tf

    torch.manual_seed(0)
    if family == "llama":
        config = tf.LlamaConfig(**COMMON, max_position_embeddings=16384, tie_word_embeddings=False,
                                rope_theta=50000.0,
                                rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                              "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
        model = tf.LlamaForCausalLM(config)
    elif family == "mistral":
        model = tf.MistralForCausalLM(tf.MistralConfig(**COMMON, max_position_embeddings=128, sliding_window=None))
    else:
        model = tf.Qwen2ForCausalLM(tf.Qwen2Config(**COMMON, max_position_embeddings=128, tie_word_embeddings=True))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                param.copy_(torch.randn_like(param) * 0.5 + (1.0 if "norm" in name else 0.0))
    model.save_pretrained(str(out), max_shard_size="100KB" if family == "mistral" else "5GB")
    return out


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    from gts_megatron.hf.weights import read_safetensors

    return read_safetensors(folder)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2"])
def test_import_equals_transformers_and_export_round_trips(tmp_path, family):
    """In this process (the CLI is exercised by the other tests): import, export, import again."""
    from gts_megatron.config import ExportHfConfig, ImportHfConfig
    from gts_megatron.hf.convert import export_hf, import_hf

    src = make_hf_model(family, tmp_path / "hf")
    summary = import_hf(ImportHfConfig(source=str(src), out=str(tmp_path / "imported")))
    assert summary["max_abs_logit_diff"] <= 1e-4
    meta = json.loads((tmp_path / "imported" / "iter_0000000" / "meta.json").read_text())
    assert meta["hf"]["architecture"] == json.loads((src / "config.json").read_text())["architectures"][0]
    assert meta["model"]["qkv_bias"] == (family == "qwen2")
    assert meta["model"]["rope_scaling_factor"] == (8.0 if family == "llama" else None)

    export_hf(ExportHfConfig(checkpoint=str(tmp_path / "imported"), out=str(tmp_path / "exported")))
    original, exported = _tensors(src), _tensors(tmp_path / "exported")
    if "lm_head.weight" not in exported:  # tied: transformers may also list the shared tensor
        original.pop("lm_head.weight", None)
    assert sorted(exported) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(exported[name], tensor), name
    # the exported folder imports again, and transformers' logits of it still match
    again = ImportHfConfig(source=str(tmp_path / "exported"), out=str(tmp_path / "again"))
    assert import_hf(again)["max_abs_logit_diff"] <= 1e-4


@pytest.mark.slow
def test_imported_qwen2_loads_at_tp2_and_exports_as_gts(tmp_path, families_data):
    """Qwen2 (QKV biases, sharded along the grouped QKV layout): the first training step's loss
    is the same at TP=1 and TP=2; expanded into a GtS model it exports on the Qwen2 remote code."""
    src = make_hf_model("qwen2", tmp_path / "hf")
    run_gts("import-hf", str(src), "--out", str(tmp_path / "imported"))
    losses = {}
    for tp in (1, 2):
        run_gts("pretrain", "--config", str(tmp_path / "imported" / "config.yaml"), "--run-dir", str(tmp_path / f"tp{tp}"),
                "--nproc-per-node", str(tp), "--set", f"parallel.tensor={tp}", "--set", "train.steps=1",
                "--set", f"train.init_from={tmp_path / 'imported'}", "--set", "train.seq_length=64",
                *indexed_args(families_data))
        losses[tp] = [m["loss"] for m in read_metrics(tmp_path / f"tp{tp}") if "loss" in m]
    assert len(losses[1]) == 1 and losses[2] == pytest.approx(losses[1], rel=1e-5)
    # expanded into GtS, it exports on the Qwen2 remote code and passes the export's own check
    plan = write_family_plan(families_data, tmp_path / "plan.json")
    run_gts("expand", "--dense", str(tmp_path / "imported"), "--plan", str(plan), "--out", str(tmp_path / "moe"))
    proc = run_gts("export-hf", str(tmp_path / "moe"), "--out", str(tmp_path / "gts"))
    assert proc.stdout.count("greedy generation identical") == 2
    assert json.loads((tmp_path / "gts" / "config.json").read_text())["architectures"] == ["GtsQwen2ForCausalLM"]


def test_the_imported_tokenizer_is_the_one_the_data_pipeline_checks(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    src = make_hf_model("llama", tmp_path / "hf")
    tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.train_from_iterator([d for lang in WORDS for d in documents(lang, 60)],
                                  trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>"]))
    tokenizer.save(str(src / "tokenizer.json"))
    (src / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>", "bos_token": "<s>"}))
    run_gts("import-hf", str(src), "--out", str(tmp_path / "imported"))
    shipped = tmp_path / "imported" / "hf" / "tokenizer.json"
    assert shipped.read_bytes() == (src / "tokenizer.json").read_bytes()
    run_gts("data", "prepare", "--corpus", str(write_corpus(tmp_path / "corpus")), "--out", str(tmp_path / "data"),
            "--tokenizer", str(shipped))
    meta = json.loads((tmp_path / "imported" / "iter_0000000" / "meta.json").read_text())
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert meta["tokenizer"]["sha256"] == manifest["tokenizer"]["sha256"]
    assert meta["tokenizer"]["eod"] == manifest["tokenizer"]["eod"] == tokenizer.token_to_id("</s>")
    out = tmp_path / "eval.json"  # eval refuses data of another tokenizer; this one it scores
    run_gts("eval", "--checkpoint", str(tmp_path / "imported"), "--data", str(tmp_path / "data"),
            "--window", "32", "--out", str(out))
    assert set(json.loads(out.read_text())["languages"]) == {"de", "en", "fr"}
    # and the export carries the tokenizer files along
    run_gts("export-hf", str(tmp_path / "imported"), "--out", str(tmp_path / "exported"))
    assert (tmp_path / "exported" / "tokenizer.json").read_bytes() == shipped.read_bytes()


def _break(case: str, folder: Path) -> None:
    config = json.loads((folder / "config.json").read_text())
    if case == "architecture":
        config["architectures"] = ["GPT2LMHeadModel"]
    elif case == "rope":
        config["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0}
    elif case == "shape":
        config["intermediate_size"] = 128
    elif case == "shard":
        next(folder.glob("model-00002-*.safetensors")).unlink()
    elif case == "tensor":
        from safetensors.torch import load_file, save_file

        shard = json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"]["model.norm.weight"]
        state = load_file(str(folder / shard))
        del state["model.norm.weight"]
        save_file(state, str(folder / shard))
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("case, fragments", [
    ("architecture", ["GPT2LMHeadModel is not supported", "LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM"]),
    ("rope", ["RoPE scaling 'yarn' is not supported"]),
    ("shape", ["mlp.gate_proj.weight has shape (96, 64), config.json implies (128, 64)"]),
    ("shard", ["missing from", "model-00002-of-"]),
    ("tensor", ["tensor model.norm.weight is missing"]),
])
def test_bad_hf_folders_are_one_line_errors_and_write_nothing(tmp_path, mistral_folder, case, fragments):
    folder = tmp_path / "hf"
    shutil.copytree(mistral_folder, folder)
    _break(case, folder)
    proc = run_gts("import-hf", str(folder), "--out", str(tmp_path / "out"), check=False)
    assert_one_line_error(proc, *fragments)
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.fixture(scope="module")
def mistral_folder(tmp_path_factory) -> Path:
    return make_hf_model("mistral", tmp_path_factory.mktemp("mistral") / "hf")


def test_export_refuses_what_it_cannot_write(tmp_path, gts_setup):
    proc = run_gts("export-hf", str(gts_setup["base"]), "--out", str(tmp_path / "x"), "--architecture",
                   "Qwen2ForCausalLM", check=False)
    assert_one_line_error(proc, "has no QKV biases")
    proc = run_gts("export-hf", str(gts_setup["moe"]), "--out", str(tmp_path / "x"), "--architecture",
                   "LlamaForCausalLM", check=False)
    assert_one_line_error(proc, "is a GtS MoE model, exported as GtsForCausalLM")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    proc = run_gts("export-hf", str(gts_setup["base"]), "--out", str(tmp_path / "taken"), check=False)
    assert_one_line_error(proc, "exists and is not empty")
    assert not list(tmp_path.glob(".tmp-*")) and not (tmp_path / "x").exists()


def test_gts_export_loads_with_trust_remote_code_and_keeps_the_function(tmp_path, gts_setup):
    """The expanded GtS model computes its dense base's function; exported, transformers (remote
    code) must compute the same logits as the exported dense base under group routing, for every
    group, and generate the same tokens."""
    from transformers import AutoModelForCausalLM

    proc = run_gts("export-hf", str(gts_setup["moe"]), "--out", str(tmp_path / "gts"))
    for routing in ("group", "learned"):  # the export's own check against the megatron model
        line = next(x for x in proc.stdout.splitlines() if x.startswith(f"{routing} routing:"))
        assert float(line.split("transformers ")[1].split(";")[0]) <= 1e-4 and "generation identical" in line
    run_gts("export-hf", str(gts_setup["base"]), "--out", str(tmp_path / "dense"))
    config = json.loads((tmp_path / "gts" / "config.json").read_text())
    assert config["architectures"] == ["GtsForCausalLM"] and config["moe_layers"] == [1]
    plan = json.loads(gts_setup["plan"].read_text())
    assert config["language_to_group"] == plan["language_to_group"]

    gts = AutoModelForCausalLM.from_pretrained(str(tmp_path / "gts"), trust_remote_code=True).eval()
    dense = AutoModelForCausalLM.from_pretrained(str(tmp_path / "dense")).eval()
    assert type(gts).__name__ == "GtsForCausalLM" and type(dense).__name__ == "LlamaForCausalLM"
    tokens = torch.randint(0, 256, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = dense(tokens).logits
        for lang in plan["languages"]:
            logits = gts(tokens, languages=[lang, lang]).logits
            assert torch.allclose(logits, reference, atol=1e-5), lang
        greedy = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        assert torch.equal(gts.generate(tokens[:, :5], languages=plan["languages"][:2], **greedy),
                           dense.generate(tokens[:, :5], **greedy))
    with pytest.raises(KeyError, match="not in this model's plan"):
        gts(tokens, languages=["xx", "yy"])


def test_a_checked_import_is_fp32(tmp_path, mistral_folder):
    proc = run_gts("import-hf", str(mistral_folder), "--out", str(tmp_path / "out"), "--dtype", "bf16", check=False)
    assert_one_line_error(proc, "--dtype bf16: the check against transformers compares fp32 logits",
                          "--set model.dtype=bf16")
    assert not (tmp_path / "out").exists()
