"""Optional richer demo text from Debian packages: the translations of Battle for Wesnoth.

Wesnoth's campaigns and help are translated into about 40 languages, as narrative dialogue (the
most natural prose found in Debian, GPL-2+). The packages are fetched with ``apt-get download``
(never installed: no dependencies, no root needed for the files themselves), their gettext
catalogs read straight out of the .deb, and every translated string that differs from the
English original and has some letters is kept. Needs Debian's apt with package lists.
"""
from __future__ import annotations

import re
import shutil
import struct
import subprocess
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from gts_megatron.errors import GtsError

WESNOTH_PACKAGES = ["wesnoth-1.16-data"] + [
    f"wesnoth-1.16-{c}" for c in ("did", "dm", "dw", "ei", "httt", "l", "low", "nr", "sof", "sota", "sotbe",
                                  "thot", "trow", "tsg", "ttb", "utbs")]
WESNOTH_LICENCE = "GPL-2.0-or-later (Battle for Wesnoth 1.16 translations, Debian packages)"
MIN_CHARACTERS = 100_000  # a language with less Wesnoth text than this is left out
_MIN_LETTERS = 20
# markup, WML tags, variables, printf and brace placeholders, entities, escaped newlines
_MARKUP = re.compile(r"</?[a-zA-Z][^<>]*>|\[/?[a-z_]+[^\]]*\]|\$[A-Za-z_][A-Za-z0-9_.|]*|%[-+0-9.]*[sdifuxXc]|"
                     r"%\([a-z_]+\)[sd]|\{[A-Za-z0-9_ ]*\}|&[a-z]+;|\\n")


def apt_download(packages: list[str], dest: Path, log=print) -> list[Path]:
    """The .deb files of ``packages`` in ``dest``, fetched with ``apt-get download`` if missing."""
    dest.mkdir(parents=True, exist_ok=True)
    missing = [p for p in packages if not list(dest.glob(f"{p}_*.deb"))]
    if missing:
        if shutil.which("apt-get") is None:
            raise GtsError("--with-debian needs Debian's apt-get, which this machine does not have")
        log(f"downloading {len(missing)} Debian packages with apt-get into {dest}")
        done = subprocess.run(["apt-get", "download", *missing], cwd=dest, capture_output=True, text=True)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            raise GtsError(f"apt-get download failed ({last}); run `apt-get update` first, or drop --with-debian")
    return [next(dest.glob(f"{p}_*.deb")) for p in packages]


def mo_catalogs(deb: Path) -> Iterator[tuple[str, bytes]]:
    """(locale, catalog bytes) of every gettext .mo file in a .deb, read without unpacking it."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(deb)], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as archive:
            for member in archive:
                parts = member.name.split("/")
                if member.isfile() and member.name.endswith(".mo") and "LC_MESSAGES" in parts:
                    yield parts[parts.index("LC_MESSAGES") - 1], archive.extractfile(member).read()
    except tarfile.TarError as exc:
        raise GtsError(f"{deb}: not a readable Debian package ({exc})") from None
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise GtsError(f"{deb}: dpkg-deb could not read it")


def mo_translations(catalog: bytes) -> Iterator[tuple[str, str]]:
    """(original, translation) pairs of a .mo catalog; the first plural form only.

    Parsed by hand rather than with :mod:`gettext`, which rejects catalogs whose plural-forms
    header it cannot evaluate (several Wesnoth catalogs have one)."""
    if len(catalog) < 20:
        return
    order = {0x950412DE: "<", 0xDE120495: ">"}.get(struct.unpack("<I", catalog[:4])[0])
    if order is None:
        return
    _, count, originals, translations = struct.unpack(order + "4I", catalog[4:20])
    for i in range(count):
        olen, ooff = struct.unpack(order + "2I", catalog[originals + 8 * i: originals + 8 * i + 8])
        tlen, toff = struct.unpack(order + "2I", catalog[translations + 8 * i: translations + 8 * i + 8])
        original = catalog[ooff: ooff + olen].split(b"\0")[0].split(b"\x04")[-1]  # drop msgctxt
        translation = catalog[toff: toff + tlen].split(b"\0")[0]
        if original:  # the empty original is the catalog header
            yield original.decode("utf-8", "replace"), translation.decode("utf-8", "replace")


def clean(text: str) -> str:
    """Translated text without markup or placeholders, whitespace collapsed."""
    return " ".join(_MARKUP.sub(" ", text).split())


def wesnoth_texts(debs: list[Path], is_language) -> dict[str, list[str]]:
    """Language code -> distinct translated strings; for each language the locale with the most
    text (e.g. pt_BR over pt). Locales with a variant (``sr@latin``) or no ISO code are skipped."""
    per_locale: dict[str, dict[str, None]] = defaultdict(dict)  # ordered and de-duplicated
    for deb in debs:
        for locale, catalog in mo_catalogs(deb):
            if "@" in locale or locale.startswith("en"):  # English is the source language
                continue
            strings = per_locale[locale]
            for original, translation in mo_translations(catalog):
                text = clean(translation)
                if text != clean(original) and sum(ch.isalpha() for ch in text) >= _MIN_LETTERS:
                    strings[text] = None
    best: dict[str, tuple[int, list[str]]] = {}
    for locale, strings in per_locale.items():
        code = locale.split("_")[0]
        size = sum(len(s) for s in strings)
        if size >= MIN_CHARACTERS and is_language(code) and size > best.get(code, (0, []))[0]:
            best[code] = (size, list(strings))
    return {code: texts for code, (_, texts) in sorted(best.items())}
