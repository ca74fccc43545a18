"""Tokenizers: a SentencePiece model (trained here or given) or a Hugging Face ``tokenizer.json``.

:class:`Tokenizer` is the one interface the rest of the package uses. It also carries the
attributes megatron-core's GPT datasets read from a tokenizer (``vocab_size``, ``eod``, ``pad``).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Iterable, Optional

from gts_megatron.artifacts import file_sha256
from gts_megatron.errors import GtsError

# ids of the special pieces in tokenizers trained here; documents end with EOD (= </s>)
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
# names Hugging Face tokenizers give their end-of-document token, most specific first
_HF_EOD_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|eot_id|>", "[SEP]")


class Tokenizer:
    """Text <-> token ids for one tokenizer file (``*.model``: SentencePiece; ``*.json``: HF)."""

    def __init__(self, path: Path, eod_token: Optional[str] = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise GtsError(f"tokenizer {self.path} does not exist")
        self.kind = "huggingface" if self.path.suffix == ".json" else "sentencepiece"
        if self.kind == "sentencepiece":
            self._load_sentencepiece()
        else:
            self._load_huggingface(eod_token)
        self.sha256 = file_sha256(self.path)

    def _load_sentencepiece(self) -> None:
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.Load(str(self.path))
        except (OSError, RuntimeError) as exc:
            raise GtsError(f"{self.path}: not a SentencePiece model ({str(exc).splitlines()[0]})") from None
        self.vocab_size = self._sp.GetPieceSize()
        self.eod = self._sp.eos_id()
        if self.eod < 0:
            raise GtsError(f"{self.path}: the SentencePiece model has no </s> piece to end documents with")
        self.pad = self._sp.pad_id() if self._sp.pad_id() >= 0 else None

    def _load_huggingface(self, eod_token: Optional[str]) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self._hf = HFTokenizer.from_file(str(self.path))
        except Exception as exc:  # the Rust library raises a plain Exception for any bad file
            raise GtsError(f"{self.path}: not a Hugging Face tokenizer.json ({exc})") from None
        self.vocab_size = self._hf.get_vocab_size(with_added_tokens=True)
        names = (eod_token,) if eod_token else _HF_EOD_NAMES
        found = [(n, self._hf.token_to_id(n)) for n in names if self._hf.token_to_id(n) is not None]
        if not found:
            raise GtsError(f"{self.path}: no end-of-document token among {', '.join(names)}; "
                           f"name one with --eod-token")
        self.eod = found[0][1]
        pad = next((self._hf.token_to_id(n) for n in ("<pad>", "<|pad|>", "[PAD]")
                    if self._hf.token_to_id(n) is not None), None)
        self.pad = pad if pad != self.eod else None

    def encode(self, texts: list[str], threads: int = 1) -> list[list[int]]:
        """Token ids of each text (no special tokens added)."""
        if self.kind == "sentencepiece":
            return self._sp.Encode(texts, num_threads=threads)
        return [e.ids for e in self._hf.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of token ids."""
        ids = [int(i) for i in ids]
        return self._sp.Decode(ids) if self.kind == "sentencepiece" else self._hf.decode(ids)

    @property
    def special_tokens_dict(self) -> dict[str, int]:
        """Special ids by role; megatron-core checks that padding collides with none of them."""
        out = {"eod_token": self.eod}
        if self.pad is not None:
            out["pad_token"] = self.pad
        return out

    def describe(self) -> dict:
        """What the manifest records about this tokenizer."""
        return {"kind": self.kind, "file": self.path.name, "sha256": self.sha256,
                "vocab_size": self.vocab_size, "eod": self.eod, "pad": self.pad}


def install_tokenizer(source: Path, out_dir: Path, eod_token: Optional[str] = None) -> Tokenizer:
    """Copy an existing tokenizer file into ``out_dir`` (as tokenizer.model or tokenizer.json)."""
    checked = Tokenizer(source, eod_token)  # refuse a bad file before copying it
    target = out_dir / ("tokenizer.json" if checked.kind == "huggingface" else "tokenizer.model")
    shutil.copyfile(source, target)
    return Tokenizer(target, eod_token)


def train_sentencepiece(sample_file: Path, out_dir: Path, vocab_size: int, model_type: str,
                        character_coverage: float, threads: int, seed: int) -> Tokenizer:
    """Train a SentencePiece model with byte fallback on ``sample_file`` -> out_dir/tokenizer.model."""
    import sentencepiece as spm

    prefix = out_dir / "tokenizer"
    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.Train(
            input=str(sample_file), model_prefix=str(prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage, byte_fallback=True,
            split_digits=True, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID, pad_id=PAD_ID,
            num_threads=threads, max_sentence_length=1 << 14,
            input_sentence_size=0, minloglevel=2)
    except RuntimeError as exc:  # e.g. a vocabulary larger than the sample supports
        raise GtsError(f"SentencePiece training failed: {str(exc).splitlines()[-1]}; "
                       f"try a smaller --vocab-size or more text") from None
    os.remove(f"{prefix}.vocab")  # the .model holds the vocabulary too
    _strip_training_paths(Path(f"{prefix}.model"))
    return Tokenizer(Path(f"{prefix}.model"))


def _strip_training_paths(model_file: Path) -> None:
    """SentencePiece records its trainer's input file, output prefix and thread count in the
    model; here they name a temporary folder and a machine, so the same corpus would give
    tokenizers with different bytes (and checksums). They play no part in tokenizing: fix them."""
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model_file.read_bytes())
    del proto.trainer_spec.input[:]
    proto.trainer_spec.model_prefix = "tokenizer"
    proto.trainer_spec.num_threads = 1
    model_file.write_bytes(proto.SerializeToString())
