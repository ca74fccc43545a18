"""Reading a user's corpus: a directory with one file per language.

Accepted files are ``<lang>.txt`` (one document per line, or documents separated by blank lines)
and ``<lang>.jsonl`` (one JSON object per line with a text field), each optionally gzipped. The
language code is the file name up to the first dot: an ISO 639-1 or 639-3 code, optionally with
script or region subtags (``zh-Hans``, ``pt_BR``). An optional ``sources.json`` describes where
each language's text came from and under which licence; it travels into the data manifest.

Bad bytes are reported with the file and byte offset (of the uncompressed stream). With
``skip_bad_lines`` such lines are dropped and counted instead.
"""
from __future__ import annotations

import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Literal, Optional

from gts_megatron.artifacts import read_json
from gts_megatron.errors import GtsError

SOURCES_FILE = "sources.json"
_SUFFIXES = (".txt", ".txt.gz", ".jsonl", ".jsonl.gz")
_CODE = re.compile(r"^(?P<primary>[a-z]{2,3})(?:[-_](?P<sub>[A-Za-z0-9]{2,8}))*$")
DocSeparator = Literal["auto", "line", "blank"]


def is_language_code(code: str) -> bool:
    """True for an ISO 639-1/639-3 language code, optionally with script or region subtags."""
    import pycountry  # imported here: its database loads lazily and only corpus reading needs it

    match = _CODE.match(code)
    primary = match.group("primary") if match else None
    return bool(primary and (pycountry.languages.get(alpha_2=primary) if len(primary) == 2
                             else pycountry.languages.get(alpha_3=primary)))


def check_language_code(code: str, where: str) -> str:
    """``code`` if it is a known language code (:func:`is_language_code`), else a GtsError."""
    if not is_language_code(code):
        raise GtsError(f"{where}: {code!r} is not a known language code; name files by ISO 639-1 or "
                       f"639-3 code with optional subtags, e.g. en.txt, yue.jsonl, zh-Hans.txt.gz")
    return code


@dataclass
class LanguageFile:
    """One language's file in a corpus directory."""

    language: str
    path: Path

    @property
    def is_jsonl(self) -> bool:
        return ".jsonl" in self.path.name


@dataclass
class ReadStats:
    """What reading one file found (filled in as documents are yielded)."""

    documents: int = 0
    characters: int = 0
    skipped_lines: int = 0
    first_skipped: Optional[str] = None


@dataclass
class Corpus:
    """The language files of a corpus directory and its optional source/licence notes."""

    root: Path
    files: dict[str, LanguageFile]
    sources: dict[str, dict] = field(default_factory=dict)

    @property
    def languages(self) -> list[str]:
        return sorted(self.files)


def scan_corpus(root: Path, languages: Optional[list[str]] = None) -> Corpus:
    """Find the language files under ``root``; refuse unknown or duplicate language codes."""
    if not root.is_dir():
        raise GtsError(f"corpus directory {root} does not exist")
    files: dict[str, LanguageFile] = {}
    for path in sorted(root.iterdir()):
        suffix = next((s for s in _SUFFIXES if path.name.endswith(s)), None)
        if suffix is None:
            continue
        if not path.is_file():  # named like a language file: dropping it silently would lose a language
            what = "a directory" if path.is_dir() else "a link to nothing" if path.is_symlink() else "not a file"
            raise GtsError(f"{path}: named like a language file but is {what}; make it a text file or move it "
                           f"out of the corpus")
        code = check_language_code(path.name[: -len(suffix)], str(path))
        if code in files:
            raise GtsError(f"{root}: language {code!r} has two files, {files[code].path.name} and "
                           f"{path.name}; keep one file per language")
        files[code] = LanguageFile(code, path)
    if not files:
        raise GtsError(f"{root}: no language files; expected <lang>.txt, <lang>.jsonl (optionally .gz)")
    if languages:
        missing = [lang for lang in languages if lang not in files]
        if missing:
            raise GtsError(f"{root}: no file for language(s) {', '.join(missing)}; "
                           f"the corpus has {', '.join(sorted(files))}")
        files = {lang: files[lang] for lang in languages}
    return Corpus(root, files, _read_sources(root))


def _read_sources(root: Path) -> dict[str, dict]:
    path = root / SOURCES_FILE
    if not path.is_file():
        return {}
    sources = read_json(path)
    if not isinstance(sources, dict) or not all(isinstance(v, dict) for v in sources.values()):
        raise GtsError(f"{path}: expected an object mapping language code -> {{source, licence, ...}}")
    return sources


def _open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _decoded_lines(lang_file: LanguageFile, skip_bad_lines: bool, stats: ReadStats) -> Iterator[str]:
    """The file's lines as text; bad UTF-8 raises with the byte offset, or is skipped and counted."""
    offset = 0
    try:
        with _open_binary(lang_file.path) as handle:
            for lineno, raw in enumerate(handle, start=1):
                try:
                    yield raw.decode("utf-8").rstrip("\r\n")
                except UnicodeDecodeError as exc:
                    where = f"{lang_file.path}: invalid UTF-8 at byte offset {offset + exc.start} (line {lineno})"
                    if not skip_bad_lines:
                        raise GtsError(f"{where}; fix the file or pass --skip-bad-lines to drop such lines") from None
                    stats.skipped_lines += 1
                    stats.first_skipped = stats.first_skipped or where
                offset += len(raw)
    except (OSError, EOFError) as exc:  # unreadable or truncated gzip
        raise GtsError(f"{lang_file.path}: cannot read ({exc})") from None


def _jsonl_texts(lines: Iterator[str], lang_file: LanguageFile, text_field: str, skip_bad_lines: bool,
                 stats: ReadStats) -> Iterator[str]:
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            text = record[text_field]
            if not isinstance(text, str):
                raise TypeError(f"field {text_field!r} is {type(text).__name__}, not a string")
        except (ValueError, KeyError, TypeError) as exc:
            problem = f"missing field {text_field!r}" if isinstance(exc, KeyError) else str(exc)
            where = f"{lang_file.path}: line {lineno}: {problem}"
            if not skip_bad_lines:
                raise GtsError(f"{where}; pass --text-field to name the text field, or --skip-bad-lines") from None
            stats.skipped_lines += 1
            stats.first_skipped = stats.first_skipped or where
            continue
        yield text


def _blank_separated(lines: Iterator[str]) -> Iterator[str]:
    paragraph: list[str] = []
    for line in lines:
        if line.strip():
            paragraph.append(line.strip())
        elif paragraph:
            yield "\n".join(paragraph)
            paragraph = []
    if paragraph:
        yield "\n".join(paragraph)


def detect_separator(lang_file: LanguageFile, probe_lines: int = 10_000) -> Literal["line", "blank"]:
    """"blank" if the start of a text file has blank lines between non-blank ones, else "line"."""
    seen_text, seen_blank_after_text = False, False
    with _open_binary(lang_file.path) as handle:
        for i, raw in enumerate(handle):
            if i >= probe_lines:
                break
            if raw.strip():
                if seen_blank_after_text:
                    return "blank"
                seen_text = True
            elif seen_text:
                seen_blank_after_text = True
    return "line"


def iter_documents(lang_file: LanguageFile, stats: ReadStats, separator: DocSeparator = "auto",
                   text_field: str = "text", skip_bad_lines: bool = False) -> Iterator[str]:
    """The non-empty documents of one language file, counting them into ``stats``."""
    lines = _decoded_lines(lang_file, skip_bad_lines, stats)
    if lang_file.is_jsonl:
        docs = _jsonl_texts(lines, lang_file, text_field, skip_bad_lines, stats)
    else:
        mode = detect_separator(lang_file) if separator == "auto" else separator
        docs = _blank_separated(lines) if mode == "blank" else (line.strip() for line in lines)
    for doc in docs:
        if doc.strip():
            stats.documents += 1
            stats.characters += len(doc)
            yield doc
