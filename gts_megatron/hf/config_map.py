"""Hugging Face config.json <-> the project's ModelConfig, for the Llama, Mistral and Qwen2
families. Anything the megatron model would compute differently is refused by name."""
from __future__ import annotations

import json
from pathlib import Path

from gts_megatron.config import ModelConfig
from gts_megatron.errors import GtsError

# architecture -> model_type; Qwen2 always has QKV biases, the others never
FAMILIES = {"LlamaForCausalLM": "llama", "MistralForCausalLM": "mistral", "Qwen2ForCausalLM": "qwen2"}
LLAMA3_ROPE = {"low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def read_hf_config(folder: Path) -> dict:
    """config.json of a Hugging Face checkpoint folder, or a one-line error."""
    path = folder / "config.json"
    if not folder.is_dir():
        raise GtsError(f"{folder} is not a folder; give a Hugging Face checkpoint folder (config.json, *.safetensors)")
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise GtsError(f"{folder} has no config.json: not a Hugging Face checkpoint folder") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise GtsError(f"{path} is not valid JSON ({exc})") from None


def _rope(hf: dict, path: str) -> tuple[float, float | None]:
    """(theta, llama3 factor or None) from either the transformers 5 ``rope_parameters`` or the
    older ``rope_theta`` + ``rope_scaling`` fields."""
    params = dict(hf.get("rope_parameters") or {})
    scaling = params if params.get("rope_type", "default") != "default" else (hf.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", hf.get("rope_theta", 10000.0)))
    kind = scaling.get("rope_type", scaling.get("type", "default")) if scaling else "default"
    if kind == "default":
        return theta, None
    if kind != "llama3":
        raise GtsError(f"{path}: RoPE scaling {kind!r} is not supported (supported: none, or llama3)")
    for key, value in LLAMA3_ROPE.items():
        if float(scaling.get(key, value)) != value:
            raise GtsError(f"{path}: llama3 RoPE scaling with {key}={scaling[key]} is not supported "
                           f"(megatron-core implements {key}={value})")
    return theta, float(scaling["factor"])


def model_config_from_hf(hf: dict, path: str) -> tuple[str, ModelConfig]:
    """(architecture, ModelConfig) of an HF config, refused if the model differs from what the
    megatron model computes."""
    architectures = hf.get("architectures") or []
    arch = next((a for a in architectures if a in FAMILIES), None)
    if arch is None:
        raise GtsError(f"{path}: architecture {', '.join(architectures) or hf.get('model_type', '?')} is not "
                       f"supported; supported: {', '.join(FAMILIES)}")
    try:
        hidden, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
        head_dim = hf.get("head_dim") or hidden // heads
        if head_dim * heads != hidden:
            raise GtsError(f"{path}: head_dim {head_dim} x {heads} heads != hidden_size {hidden}; only "
                           f"head_dim = hidden_size / num_attention_heads is supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise GtsError(f"{path}: hidden_act {hf['hidden_act']!r} is not supported (SwiGLU with silu only)")
        for flag in ("attention_bias", "mlp_bias"):
            if hf.get(flag):
                raise GtsError(f"{path}: {flag}=true is not supported (biases on all projections)")
        window, positions = hf.get("sliding_window"), int(hf.get("max_position_embeddings", 2048))
        if window is not None and (arch != "Qwen2ForCausalLM" or hf.get("use_sliding_window")) \
                and int(window) < positions:
            raise GtsError(f"{path}: sliding-window attention (sliding_window={window}) is not supported; "
                           f"it equals full attention only when sliding_window >= max_position_embeddings")
        theta, factor = _rope(hf, path)
        model = ModelConfig(
            num_layers=int(hf["num_hidden_layers"]), hidden_size=hidden, num_attention_heads=heads,
            num_query_groups=int(hf.get("num_key_value_heads") or heads),
            ffn_hidden_size=int(hf["intermediate_size"]), vocab_size=int(hf["vocab_size"]),
            max_seq_length=positions, rope_theta=theta, rope_scaling_factor=factor,
            norm_eps=float(hf.get("rms_norm_eps", 1e-6)), tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
            qkv_bias=arch == "Qwen2ForCausalLM", init_std=float(hf.get("initializer_range", 0.02)))
    except KeyError as exc:
        raise GtsError(f"{path}: missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise GtsError(f"{path}: {' '.join(str(exc).split())}") from None
    return arch, model


def hf_config_from_model(arch: str, model: ModelConfig, extra: dict | None = None) -> dict:
    """The config.json of ``model`` as the ``arch`` family (``extra``: token ids and the like)."""
    rope = {"rope_theta": model.rope_theta, "rope_type": "default"}
    if model.rope_scaling_factor is not None:
        rope = {**rope, "rope_type": "llama3", "factor": model.rope_scaling_factor, **LLAMA3_ROPE}
    config = {
        "architectures": [arch], "model_type": FAMILIES[arch], "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_hidden_size, "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_attention_heads,
        "num_key_value_heads": model.num_query_groups or model.num_attention_heads,
        "head_dim": model.hidden_size // model.num_attention_heads, "hidden_act": "silu",
        "max_position_embeddings": model.max_seq_length, "rms_norm_eps": model.norm_eps,
        "vocab_size": model.vocab_size, "tie_word_embeddings": model.tie_embeddings,
        "initializer_range": model.init_std, "rope_parameters": rope, "rope_theta": model.rope_theta,
        "torch_dtype": {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}[model.dtype],
        "attention_dropout": 0.0, "use_cache": True,
    }
    if model.rope_scaling_factor is not None:
        config["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if arch == "LlamaForCausalLM":
        config.update(attention_bias=False, mlp_bias=False)
    if arch == "MistralForCausalLM":
        config["sliding_window"] = None
    if arch == "Qwen2ForCausalLM":
        config.update(use_sliding_window=False, sliding_window=None)
    return {**config, **(extra or {})}


def token_ids(folder) -> dict:
    """bos/eos/pad token ids from the config.json an import kept (``folder``: its hf/ folder)."""
    path = Path(folder) / "config.json" if folder is not None else None
    if path is None or not path.is_file():
        return {}
    original = json.loads(path.read_text())
    return {k: original[k] for k in ("bos_token_id", "eos_token_id", "pad_token_id") if k in original}
