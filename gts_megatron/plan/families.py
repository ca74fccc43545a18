"""Language families: a table of genus and family per language, and how well a grouping follows it.

The table follows WALS's genera and families (Dryer & Haspelmath, 2013) for the languages of the
demo corpus (with its restricted texts), the paper's 18 and 128-language sets' large members,
and other widely used languages. It is the reference against which `gts plan` reports the
adjusted Rand index (ARI) of its groups, and the best ARI any grouping with the same group sizes
could reach, since balanced groups cannot follow families of unequal size exactly.
"""
from __future__ import annotations

import itertools
from math import comb, factorial
from typing import Optional

import numpy as np

# ISO 639-1 (or 639-3 where there is no 639-1 code) -> (genus, family)
FAMILIES: dict[str, tuple[str, str]] = {
    # Indo-European
    "en": ("Germanic", "Indo-European"), "de": ("Germanic", "Indo-European"),
    "nl": ("Germanic", "Indo-European"), "sv": ("Germanic", "Indo-European"),
    "da": ("Germanic", "Indo-European"), "no": ("Germanic", "Indo-European"),
    "nb": ("Germanic", "Indo-European"), "is": ("Germanic", "Indo-European"),
    "af": ("Germanic", "Indo-European"), "yi": ("Germanic", "Indo-European"),
    "fr": ("Romance", "Indo-European"), "es": ("Romance", "Indo-European"),
    "it": ("Romance", "Indo-European"), "pt": ("Romance", "Indo-European"),
    "ro": ("Romance", "Indo-European"), "ca": ("Romance", "Indo-European"),
    "gl": ("Romance", "Indo-European"), "la": ("Romance", "Indo-European"),
    "ru": ("Slavic", "Indo-European"), "uk": ("Slavic", "Indo-European"),
    "pl": ("Slavic", "Indo-European"), "cs": ("Slavic", "Indo-European"),
    "sk": ("Slavic", "Indo-European"), "bg": ("Slavic", "Indo-European"),
    "sr": ("Slavic", "Indo-European"), "hr": ("Slavic", "Indo-European"),
    "sl": ("Slavic", "Indo-European"), "be": ("Slavic", "Indo-European"),
    "mk": ("Slavic", "Indo-European"), "lt": ("Baltic", "Indo-European"),
    "lv": ("Baltic", "Indo-European"), "el": ("Greek", "Indo-European"),
    "hy": ("Armenian", "Indo-European"), "sq": ("Albanian", "Indo-European"),
    "ga": ("Celtic", "Indo-European"), "cy": ("Celtic", "Indo-European"),
    "fa": ("Iranian", "Indo-European"), "ps": ("Iranian", "Indo-European"),
    "ku": ("Iranian", "Indo-European"), "tg": ("Iranian", "Indo-European"),
    "hi": ("Indic", "Indo-European"), "ur": ("Indic", "Indo-European"),
    "bn": ("Indic", "Indo-European"), "mr": ("Indic", "Indo-European"),
    "gu": ("Indic", "Indo-European"), "pa": ("Indic", "Indo-European"),
    "ne": ("Indic", "Indo-European"), "si": ("Indic", "Indo-European"),
    "as": ("Indic", "Indo-European"), "or": ("Indic", "Indo-European"),
    # Afro-Asiatic
    "ar": ("Semitic", "Afro-Asiatic"), "he": ("Semitic", "Afro-Asiatic"),
    "am": ("Semitic", "Afro-Asiatic"), "mt": ("Semitic", "Afro-Asiatic"),
    "ti": ("Semitic", "Afro-Asiatic"), "ha": ("West Chadic", "Afro-Asiatic"),
    "so": ("Lowland East Cushitic", "Afro-Asiatic"), "om": ("Lowland East Cushitic", "Afro-Asiatic"),
    # Uralic, Turkic, Mongolic, Koreanic, Japonic, Kartvelian, isolates
    "fi": ("Finnic", "Uralic"), "et": ("Finnic", "Uralic"), "hu": ("Ugric", "Uralic"),
    "tr": ("Turkic", "Turkic"), "az": ("Turkic", "Turkic"), "kk": ("Turkic", "Turkic"),
    "uz": ("Turkic", "Turkic"), "ky": ("Turkic", "Turkic"), "tt": ("Turkic", "Turkic"),
    "mn": ("Mongolic", "Mongolic"), "ko": ("Korean", "Koreanic"), "ja": ("Japanese", "Japonic"),
    "ka": ("Kartvelian", "Kartvelian"), "eu": ("Basque", "Basque"),
    # Sino-Tibetan, Tai-Kadai, Austro-Asiatic
    "zh": ("Chinese", "Sino-Tibetan"), "yue": ("Chinese", "Sino-Tibetan"),
    "my": ("Burmese-Lolo", "Sino-Tibetan"), "bo": ("Bodic", "Sino-Tibetan"),
    "th": ("Kam-Tai", "Tai-Kadai"), "lo": ("Kam-Tai", "Tai-Kadai"),
    "vi": ("Viet-Muong", "Austro-Asiatic"), "km": ("Khmer", "Austro-Asiatic"),
    # Austronesian
    "tl": ("Greater Central Philippine", "Austronesian"), "ceb": ("Greater Central Philippine", "Austronesian"),
    "id": ("Malayo-Sumbawan", "Austronesian"), "ms": ("Malayo-Sumbawan", "Austronesian"),
    "jv": ("Javanese", "Austronesian"), "su": ("Malayo-Sumbawan", "Austronesian"),
    "mg": ("Barito", "Austronesian"), "mi": ("Oceanic", "Austronesian"),
    # Dravidian
    "ta": ("Southern Dravidian", "Dravidian"), "ml": ("Southern Dravidian", "Dravidian"),
    "kn": ("Southern Dravidian", "Dravidian"), "te": ("South-Central Dravidian", "Dravidian"),
    # Niger-Congo
    "sw": ("Bantoid", "Niger-Congo"), "zu": ("Bantoid", "Niger-Congo"), "xh": ("Bantoid", "Niger-Congo"),
    "rw": ("Bantoid", "Niger-Congo"), "sn": ("Bantoid", "Niger-Congo"), "yo": ("Defoid", "Niger-Congo"),
    "ig": ("Igboid", "Niger-Congo"), "wo": ("Wolof", "Niger-Congo"),
}

LEVELS = ("family", "genus")


def family_of(language: str, level: str = "family") -> Optional[str]:
    """The language's family (or genus) from the table; None if it is not there. A code with
    subtags (``zh-Hant``, ``pt_BR``) is looked up by its first part."""
    entry = FAMILIES.get(language.lower().replace("_", "-").split("-")[0])
    if entry is None:
        return None
    genus, family = entry
    return family if level == "family" else genus


def adjusted_rand_index(truth: list[int], found: list[int]) -> float:
    """Adjusted Rand index of two labelings of the same items (1.0: the same partition)."""
    table = np.zeros((max(truth) + 1, max(found) + 1), dtype=np.int64)
    for t, f in zip(truth, found):
        table[t, f] += 1
    pairs = sum(comb(int(n), 2) for n in table.flat)
    rows, cols = sum(comb(int(n), 2) for n in table.sum(1)), sum(comb(int(n), 2) for n in table.sum(0))
    expected = rows * cols / comb(len(truth), 2)
    top = (rows + cols) / 2
    return 1.0 if top == expected else float((pairs - expected) / (top - expected))


def _labels(names: list[str]) -> list[int]:
    order = sorted(set(names))
    return [order.index(n) for n in names]


def _partitions(items: list[int], sizes: list[int]):
    """Every partition of ``items`` into groups of the given sizes (groups of equal size unordered)."""
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for size in sorted(set(sizes)):
        left = list(sizes)
        left.remove(size)
        for others in itertools.combinations(rest, size - 1):
            remaining = [i for i in rest if i not in others]
            for tail in _partitions(remaining, left):
                yield [(first, *others), *tail]


def _partition_count(n: int, sizes: list[int]) -> int:
    count, left = 1, n
    for size in sizes:
        count *= comb(left, size)
        left -= size
    for size in set(sizes):
        count //= factorial(sizes.count(size))  # groups of equal size are unordered
    return count


def best_reachable_ari(truth: list[int], sizes: list[int], limit: int = 300_000) -> Optional[float]:
    """The highest ARI against ``truth`` of any grouping with these group sizes (None when there
    are more than ``limit`` such groupings to try)."""
    if _partition_count(len(truth), sizes) > limit:
        return None
    best = -1.0
    for groups in _partitions(list(range(len(truth))), sizes):
        found = [0] * len(truth)
        for g, members in enumerate(groups):
            for i in members:
                found[i] = g
        best = max(best, adjusted_rand_index(truth, found))
    return best


def family_agreement(language_to_group: dict[str, int]) -> dict:
    """How far a grouping follows the table: per level, the ARI of the groups against the
    families (or genera) and the best ARI reachable with the same group sizes; languages the
    table lacks are listed and left out."""
    known = [lang for lang in language_to_group if family_of(lang) is not None]
    out = {"unknown": sorted(set(language_to_group) - set(known))}
    if len(known) < 2:
        return out
    found = _labels([str(language_to_group[lang]) for lang in known])
    sizes = [found.count(g) for g in set(found)]
    for level in LEVELS:
        truth = _labels([family_of(lang, level) for lang in known])
        out[level] = {"ari": round(adjusted_rand_index(truth, found), 4),
                      "best_reachable": _round(best_reachable_ari(truth, sizes)),
                      "of": {lang: family_of(lang, level) for lang in known}}
    return out


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 4)
