"""The data manifest: what ``<run>/data/`` holds, and the checks that it is intact.

Layout of a data directory::

    manifest.json                 this file's schema (:class:`Manifest`)
    tokenizer.model|.json         the tokenizer (absent for synthetic token languages)
    <lang>/{train,valid,test}.bin/.idx   megatron-core indexed datasets, one document per entry
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from gts_megatron.artifacts import file_sha256, read_json
from gts_megatron.data.tokenizer import Tokenizer
from gts_megatron.errors import GtsError

MANIFEST_FILE = "manifest.json"
FORMAT = "gts-data/1"
SPLITS = ("train", "valid", "test")


class _Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SplitStats(_Record):
    """Documents and tokens (EOD included) of one split of one language."""

    documents: int
    tokens: int


class LanguageData(_Record):
    """One language's datasets and where its text came from."""

    splits: dict[str, SplitStats]
    source_file: Optional[str] = None
    skipped_lines: int = 0


class TokenizerInfo(_Record):
    """The tokenizer the token ids belong to; ``kind: none`` for synthetic token languages."""

    kind: Literal["sentencepiece", "huggingface", "none"]
    file: Optional[str] = None
    sha256: Optional[str] = None
    vocab_size: int
    eod: int
    pad: Optional[int] = None


class Manifest(_Record):
    """Everything a training run needs to know about a data directory."""

    format: Literal["gts-data/1"] = FORMAT
    languages: list[str]
    tokenizer: TokenizerInfo
    data: dict[str, LanguageData]
    sources: dict[str, dict] = {}
    families: Optional[dict[str, str]] = None  # synthetic data: the planted language families
    inputs: dict = {}  # what produced it (files, options); a rerun with equal inputs is skipped
    tokenizer_sample: Optional[dict[str, int]] = None  # characters per language it was trained on

    def tokens(self, language: str, split: str = "train") -> int:
        """Token count of ``language``'s ``split``."""
        return self.data[language].splits[split].tokens


def dataset_prefix(data_dir: Path, language: str, split: str) -> Path:
    """Path prefix (without .bin/.idx) of a language's split."""
    return data_dir / language / split


def write_manifest(data_dir: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` into ``data_dir`` (the caller renames the directory into place)."""
    (data_dir / MANIFEST_FILE).write_text(json.dumps(manifest.model_dump(mode="json"), indent=1,
                                                     ensure_ascii=False) + "\n")


# megatron-core's indexed dataset: an .idx header (magic, version, dtype code, sequence and document
# counts), then int32 lengths, int64 pointers and int64 document starts; the .bin holds the tokens
_IDX_MAGIC = b"MMIDIDX\x00\x00"
_IDX_HEADER = struct.Struct("<9sQBQQ")
_ITEM_BYTES = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 8, 7: 4, 8: 2}  # megatron's DType codes


def check_dataset_sizes(prefix: Path, stats: SplitStats) -> None:
    """Refuse a truncated or foreign .idx/.bin pair before megatron reads it: the sizes must be the
    ones its header and the manifest's token count imply (a cheap check: no token is read)."""
    idx, bin_ = prefix.with_suffix(".idx"), prefix.with_suffix(".bin")
    with open(idx, "rb") as handle:
        header = handle.read(_IDX_HEADER.size)
    fix = "rebuild the data directory (gts data prepare --force)"
    if len(header) < _IDX_HEADER.size or header[:9] != _IDX_MAGIC:
        raise GtsError(f"{idx}: not a megatron index (truncated or another format); {fix}")
    _, _, code, sequences, documents = _IDX_HEADER.unpack(header)
    expected = _IDX_HEADER.size + sequences * 12 + documents * 8
    if code not in _ITEM_BYTES or idx.stat().st_size != expected:
        raise GtsError(f"{idx}: {idx.stat().st_size} bytes where its header implies {expected}: truncated; {fix}")
    expected = stats.tokens * _ITEM_BYTES[code]
    if bin_.stat().st_size != expected:
        raise GtsError(f"{bin_}: {bin_.stat().st_size} bytes where the manifest's {stats.tokens} tokens take "
                       f"{expected}: truncated or from another preparation; {fix}")


def load_manifest(data_dir: Path) -> Manifest:
    """Read and validate ``data_dir/manifest.json``; every dataset file must be present."""
    path = data_dir / MANIFEST_FILE
    if not path.is_file():
        raise GtsError(f"{data_dir} has no {MANIFEST_FILE}; build it with `gts data prepare` "
                       f"or `gts data synthetic`")
    try:
        manifest = Manifest.model_validate(read_json(path))
    except ValidationError as exc:
        first = exc.errors()[0] if isinstance(exc, ValidationError) else None
        what = f"{'.'.join(map(str, first['loc']))}: {first['msg']}" if first else str(exc)
        raise GtsError(f"{path}: not a valid data manifest ({what})") from None
    for lang in manifest.languages:
        for split in SPLITS:
            prefix = dataset_prefix(data_dir, lang, split)
            if not (prefix.with_suffix(".bin").is_file() and prefix.with_suffix(".idx").is_file()):
                raise GtsError(f"{path}: dataset {prefix}.bin/.idx is missing; rebuild the data directory")
            check_dataset_sizes(prefix, manifest.data[lang].splits[split])
    return manifest


def load_tokenizer(data_dir: Path, manifest: Manifest) -> Optional[Tokenizer]:
    """The data directory's tokenizer, refused if it is not the one the tokens were made with."""
    info = manifest.tokenizer
    if info.kind == "none":
        return None
    path = data_dir / (info.file or "")
    if not path.is_file():
        raise GtsError(f"{data_dir / MANIFEST_FILE}: tokenizer file {path} is missing")
    actual = file_sha256(path)
    if actual != info.sha256:
        raise GtsError(f"{path} does not match the manifest (sha256 {actual[:12]}..., manifest says "
                       f"{str(info.sha256)[:12]}...); the token datasets were made with another "
                       f"tokenizer: restore it or run `gts data prepare` again")
    return Tokenizer(path)
