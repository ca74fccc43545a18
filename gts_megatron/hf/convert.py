"""`gts import-hf` and `gts export-hf`: Hugging Face Llama/Mistral/Qwen2 checkpoint folders <->
megatron dist-checkpoints (which load at any tensor-parallel layout).

Both run in one process on full tensors. The import checks itself: transformers and the
imported megatron model score the same tokens and the largest logit difference is reported
(and refused above a tolerance).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Optional

import torch

from gts_megatron.config import ExportHfConfig, ImportHfConfig, ParallelConfig
from gts_megatron.artifacts import staged_directory
from gts_megatron.contracts.checkpoint import CheckpointRecord
from gts_megatron.contracts.trained import TrainedModel
from gts_megatron.errors import GtsError
from gts_megatron.hf.config_map import (FAMILIES, hf_config_from_model, model_config_from_hf, read_hf_config,
                                         token_ids)
from gts_megatron.hf.gts_export import export_gts
from gts_megatron.hf.logits import hf_logits, megatron_logits
from gts_megatron.model.sizes import count_parameters
from gts_megatron.hf.weights import hf_to_megatron, megatron_to_hf, read_safetensors, write_safetensors
from gts_megatron.data.tokenizer import Tokenizer

# files of an HF folder that travel with the weights (tokenizer and generation settings)
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
              "generation_config.json")
HF_FILES_DIR = "hf"
_DTYPES = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}


def _tokenizer_record(folder: Path, log) -> Optional[dict]:
    """The tokenizer identity the data pipeline checks (as `gts data prepare --tokenizer` makes it)."""
    for name in ("tokenizer.json", "tokenizer.model"):
        if (folder / name).is_file():
            eos = None
            config = folder / "tokenizer_config.json"
            try:
                eos = json.loads(config.read_text()).get("eos_token") if config.is_file() else None
            except (ValueError, AttributeError):
                eos = None  # an unreadable tokenizer_config.json: fall back to the usual end tokens
            eos = eos.get("content") if isinstance(eos, dict) else eos
            try:
                tok = Tokenizer(folder / name, eod_token=eos if name.endswith(".json") else None)
            except GtsError as exc:  # the weights are still worth importing; say why it is not recorded
                log(f"note: the tokenizer is not recorded: {exc}")
                return None
            return {"kind": tok.kind, "sha256": tok.sha256, "vocab_size": tok.vocab_size, "eod": tok.eod,
                    "file": name}
    return None


def _check_output(out: Path, force: bool) -> None:
    if out.exists() and any(out.iterdir()) and not force:
        raise GtsError(f"{out} exists and is not empty; choose another --out or pass --force to replace it")


def import_hf(cfg: ImportHfConfig, log=print) -> dict:
    """Convert the HF checkpoint folder ``cfg.source`` into a dist-checkpoint under ``cfg.out``
    (``iter_0000000``, ``latest``, ``config.yaml`` with the model section, ``hf/`` with the
    tokenizer). Returns a summary, with ``max_abs_logit_diff`` when ``cfg.verify``."""
    import yaml

    src, out = Path(cfg.source), Path(cfg.out)
    hf = read_hf_config(src)
    arch, model_cfg = model_config_from_hf(hf, str(src / "config.json"))
    # checked imports are fp32; unchecked ones keep the folder's dtype unless told otherwise
    chosen = "fp32" if cfg.verify else cfg.dtype or _DTYPES.get(str(hf.get("dtype") or hf.get("torch_dtype")),
                                                                 "fp32")
    model_cfg = model_cfg.model_copy(update={"dtype": chosen})
    state = hf_to_megatron(read_safetensors(src), model_cfg, str(src))
    tokenizer = _tokenizer_record(src, log)
    # megatron is imported only now: bad input above fails fast
    from gts_megatron.engine.checkpoint import STEP_ZERO, Checkpointable, save_checkpoint
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    log(f"importing {arch} from {src}: {model_cfg.num_layers} layers, hidden {model_cfg.hidden_size}, "
        f"{count_parameters(model_cfg) / 1e6:.2f}M parameters ({chosen})")
    _check_output(out, cfg.force)
    summary = {"architecture": arch, "source": str(src.resolve()), "dtype": chosen}
    runtime = init_runtime(ParallelConfig(), 1234)
    try:
        with staged_directory(out) as tmp:
            if runtime.env.world_size != 1:
                raise GtsError("gts import-hf runs in one process; its checkpoint loads at any layout afterwards")
            model = _loaded_model(src, model_cfg, state)
            if cfg.verify:
                summary["max_abs_logit_diff"] = _check_logits(src, model, model_cfg, cfg.tolerance, log)
            files = tmp / HF_FILES_DIR
            files.mkdir()
            for name in SIDE_FILES:
                if (src / name).is_file():
                    shutil.copy2(src / name, files / name)
            (files / "config.json").write_text(json.dumps(hf, indent=2))
            save_checkpoint(tmp, Checkpointable(model, model_cfg), STEP_ZERO,
                            CheckpointRecord(stage="import", tokenizer=tokenizer,
                                             hf={"architecture": arch, "source": summary["source"]}))
            model_yaml = yaml.safe_dump({"model": model_cfg.model_dump(mode="json")}, sort_keys=False)
            (tmp / "config.yaml").write_text(model_yaml)
    finally:
        shutdown_runtime()
    log(f"wrote {out}/iter_0000000 (train from it with --config {out}/config.yaml "
        f"--set train.init_from={out}" + (f"; its tokenizer: {out}/{HF_FILES_DIR}/{tokenizer['file']})"
                                          if tokenizer else ")"))
    return summary


def _loaded_model(src: Path, model_cfg, state: dict):
    """The megatron model holding the converted weights, in eval mode (refused when they do not fit)."""
    from gts_megatron.engine.checkpoint import unwrap
    from gts_megatron.model.llama import build_model, transformer_config

    model = build_model(model_cfg, transformer_config(model_cfg, ParallelConfig()))
    result = unwrap(model).load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("_extra_state")]
    if missing or result.unexpected_keys:
        raise GtsError(f"{src}: the converted weights do not fit the model (missing {missing[:3]}, "
                       f"unexpected {result.unexpected_keys[:3]})")
    return model.eval()


def _check_logits(src: Path, model, model_cfg, tolerance: float, log) -> float:
    """The largest logit difference from transformers on random tokens; refused above ``tolerance``."""
    tokens = torch.randint(0, model_cfg.vocab_size, (2, min(64, model_cfg.max_seq_length)),
                           generator=torch.Generator().manual_seed(0))
    ours = megatron_logits(model, tokens, model_cfg.vocab_size)
    diff = float((ours - hf_logits(src, tokens)).abs().max())
    log(f"logits vs transformers on {tuple(tokens.shape)} random tokens: max |diff| {diff:.2e}")
    if not diff <= tolerance:
        raise GtsError(f"{src}: the imported model's logits differ from transformers' by {diff:.2e} "
                       f"(more than {tolerance:g}); nothing was written")
    return diff


def export_hf(cfg: ExportHfConfig, log=print) -> dict:
    """Write a checkpoint as an HF folder. Dense: its family's format (``cfg.architecture``
    overrides the family; default the imported one, else Qwen2 for QKV biases and Llama
    otherwise). GtS: a trust_remote_code folder, checked against the checkpoint under both
    routings. Tokenizer files are copied from ``cfg.tokenizer_dir`` (default: the import's hf/
    folder, when there is one)."""
    from gts_megatron.engine.checkpoint import load_trained, unwrap
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    out, architecture = Path(cfg.out), cfg.architecture
    tokenizer_dir = Path(cfg.tokenizer_dir) if cfg.tokenizer_dir else None
    trained = TrainedModel.open(Path(cfg.checkpoint))
    ckpt, meta, model_cfg = trained.path, trained.meta, trained.config
    arch = architecture or (meta.hf or {}).get("architecture") or (
        "Qwen2ForCausalLM" if model_cfg.qkv_bias else "LlamaForCausalLM")
    if trained.plan is not None and architecture:
        raise GtsError(f"--architecture {architecture}: {ckpt} is a GtS MoE model, exported as GtsForCausalLM")
    if arch not in FAMILIES:
        raise GtsError(f"--architecture {arch}: supported: {', '.join(FAMILIES)}")
    if model_cfg.qkv_bias != (arch == "Qwen2ForCausalLM"):
        raise GtsError(f"--architecture {arch}: the model {'has' if model_cfg.qkv_bias else 'has no'} QKV biases, "
                       f"so it is a {'Qwen2' if model_cfg.qkv_bias else 'Llama or Mistral'} model")
    side = tokenizer_dir or next((d / HF_FILES_DIR for d in (ckpt.parent, ckpt.parent.parent)
                                  if (d / HF_FILES_DIR).is_dir()), None)
    _check_output(out, cfg.force)
    runtime = init_runtime(ParallelConfig(), 1234)
    summary = {}
    try:
        with staged_directory(out) as tmp:
            if runtime.env.world_size != 1:
                raise GtsError("gts export-hf runs in one process")
            if side is not None:
                for name in SIDE_FILES:
                    if (side / name).is_file():
                        shutil.copy2(side / name, tmp / name)
            if trained.plan is not None:
                summary = export_gts(trained, tmp, side, cfg.tolerance, log)
            else:
                state = megatron_to_hf(unwrap(load_trained(trained, None)).state_dict(), model_cfg)
                config = hf_config_from_model(arch, model_cfg, token_ids(side))
                (tmp / "config.json").write_text(json.dumps(config, indent=2))
                write_safetensors(state, tmp)
    finally:
        shutdown_runtime()
    log(f"wrote {out}")
    return summary
