"""`gts import-hf` and `gts export-hf`."""
from __future__ import annotations

import argparse

from gts_megatron.config import ExportHfConfig, ImportHfConfig
from gts_megatron.hf.config_map import FAMILIES


def import_hf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", help=ImportHfConfig.model_fields["source"].description)
    p.add_argument("--out", required=True, help=ImportHfConfig.model_fields["out"].description)
    p.add_argument("--no-verify", dest="verify", action="store_false", default=None,
                   help="skip comparing logits with transformers (which holds a second fp32 copy of the model)")


def import_hf(_args: argparse.Namespace, options) -> int:
    from gts_megatron.hf.convert import import_hf as run_import

    run_import(options)
    return 0


def export_hf_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help=ExportHfConfig.model_fields["checkpoint"].description)
    p.add_argument("--out", required=True, help=ExportHfConfig.model_fields["out"].description)
    p.add_argument("--architecture", choices=sorted(FAMILIES),
                   help=ExportHfConfig.model_fields["architecture"].description)


def export_hf(_args: argparse.Namespace, options) -> int:
    from gts_megatron.hf.convert import export_hf as run_export

    run_export(options)
    return 0
