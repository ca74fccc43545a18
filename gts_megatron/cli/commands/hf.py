"""`gts import-hf` and `gts export-hf`."""
from __future__ import annotations

import argparse
from pathlib import Path


def import_hf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help="HF checkpoint folder: config.json, model.safetensors or shards + index, tokenizer")
    p.add_argument("--out", required=True, help="checkpoint folder to write (iter_0000000, latest, config.yaml, hf/)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"],
                   help="parameter dtype with --no-verify (default: the folder's torch_dtype); checked imports "
                        "are fp32 (train in bf16 with --set model.dtype=bf16)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip comparing logits with transformers (which holds a second fp32 copy of the model)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")


def import_hf(args: argparse.Namespace, _options) -> int:
    from gts_megatron.hf.convert import import_hf as run_import

    run_import(Path(args.source), Path(args.out), dtype=args.dtype, verify=args.verify, force=args.force)
    return 0


def export_hf_arguments(p: argparse.ArgumentParser) -> None:
    from gts_megatron.hf.config_map import FAMILIES

    p.add_argument("checkpoint", help="dense checkpoint (or a checkpoints folder: its latest)")
    p.add_argument("--out", required=True, help="HF folder to write")
    p.add_argument("--architecture", choices=sorted(FAMILIES),
                   help="family to write (default: the imported one; else Qwen2 with QKV biases, Llama without)")
    p.add_argument("--tokenizer-dir", help="copy tokenizer files from here (default: the import's hf/ folder)")
    p.add_argument("--force", action="store_true", help="replace a non-empty --out")


def export_hf(args: argparse.Namespace, _options) -> int:
    from gts_megatron.hf.convert import export_hf as run_export

    run_export(Path(args.checkpoint), Path(args.out), architecture=args.architecture,
               tokenizer_dir=Path(args.tokenizer_dir) if args.tokenizer_dir else None, force=args.force)
    return 0
