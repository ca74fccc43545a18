"""Grouping languages from their distance matrix (distance = 1 - cosine similarity).

- balanced, exhaustive (the paper's variant for small n): repeatedly take, among all subsets of
  size n/k of the remaining languages, the one with the smallest largest pairwise distance;
- balanced, greedy (the paper's variant for large n): seed a group with the closest remaining
  pair, then add the language whose largest distance to the members is smallest, up to n/k;
- when k does not divide n, both make groups whose sizes differ by at most one (the larger
  ones first), which is the paper's rule where it applies;
- agglomerative, average linkage (scipy), with k given, chosen by silhouette, or cut at a
  distance threshold;
- a map given by the user, validated.

Ties are broken towards the lower language index (languages are sorted by code), so the same
matrix always gives the same groups.
"""
from __future__ import annotations

import itertools
import math
import typing
from typing import Optional

import numpy as np

from gts_megatron.config.commands import GroupingMethod
from gts_megatron.errors import GtsError

EXHAUSTIVE_LIMIT = 200_000  # subsets examined per group before "balanced" switches to greedy


def balanced_sizes(n: int, k: int) -> list[int]:
    """Sizes of k groups of n languages that differ by at most one, the larger first."""
    if not 1 <= k <= n:
        raise GtsError(f"--k {k}: must be between 1 and the {n} languages")
    return [n // k + 1] * (n % k) + [n // k] * (k - n % k)


def _widest(distance: np.ndarray, members: np.ndarray) -> np.ndarray:
    """Largest pairwise distance within each row of member indices [subsets, size]."""
    return distance[members[:, :, None], members[:, None, :]].max(axis=(1, 2))


def balanced_exhaustive(distance: np.ndarray, k: int) -> list[list[int]]:
    """The paper's small-n grouping (see module doc)."""
    sizes = balanced_sizes(len(distance), k)
    remaining, groups = list(range(len(distance))), []
    for size in sizes[:-1]:
        best, best_width = None, math.inf
        subsets = itertools.combinations(remaining, size)
        while len(chunk := np.array(list(itertools.islice(subsets, 50_000)), dtype=np.int64)):
            widths = _widest(distance, chunk)
            i = int(np.argmin(widths))  # first minimum: ties go to the lexicographically first subset
            if widths[i] < best_width:
                best, best_width = chunk[i].tolist(), widths[i]
        groups.append(best)
        remaining = [i for i in remaining if i not in best]
    return groups + [remaining]


def balanced_greedy(distance: np.ndarray, k: int) -> list[list[int]]:
    """The paper's large-n grouping (see module doc)."""
    sizes = balanced_sizes(len(distance), k)
    remaining, groups = list(range(len(distance))), []
    for size in sizes[:-1]:
        if size == 1:  # no pair to seed with: the remaining languages one per group
            groups.append([remaining.pop(0)])
            continue
        sub = distance[np.ix_(remaining, remaining)].copy()
        np.fill_diagonal(sub, np.inf)
        a, b = divmod(int(np.argmin(sub)), len(remaining))  # closest pair, first in index order
        group = [remaining[a], remaining[b]]
        while len(group) < size:
            candidates = [i for i in remaining if i not in group]
            widest = distance[np.ix_(candidates, group)].max(axis=1)
            group.append(candidates[int(np.argmin(widest))])
        groups.append(sorted(group))
        remaining = [i for i in remaining if i not in group]
    return groups + [remaining]


def balanced(distance: np.ndarray, k: int) -> list[list[int]]:
    """Exhaustive while the subsets are few enough to examine, greedy beyond."""
    n = len(distance)
    size = balanced_sizes(n, k)[0]
    return balanced_exhaustive(distance, k) if math.comb(n, size) <= EXHAUSTIVE_LIMIT else balanced_greedy(distance, k)


def silhouette(distance: np.ndarray, labels: np.ndarray) -> float:
    """Mean silhouette coefficient of a clustering under a precomputed distance matrix."""
    scores = []
    for i in range(len(labels)):
        own = labels == labels[i]
        if own.sum() == 1:
            scores.append(0.0)
            continue
        a = distance[i, own & (np.arange(len(labels)) != i)].mean()
        b = min(distance[i, labels == other].mean() for other in set(labels.tolist()) if other != labels[i])
        scores.append((b - a) / max(a, b) if max(a, b) > 0 else 0.0)
    return float(np.mean(scores))


def agglomerative(distance: np.ndarray, k: Optional[int] = None, threshold: Optional[float] = None) -> list[list[int]]:
    """Average-linkage clustering cut into ``k`` groups, at ``threshold``, or at the k (2..n-1)
    with the best silhouette."""
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    n = len(distance)
    if k is not None and not 1 <= k <= n:
        raise GtsError(f"--k {k}: must be between 1 and the {n} languages")
    tree = linkage(squareform(distance, checks=False), method="average")
    if k is not None:
        labels = fcluster(tree, k, criterion="maxclust")
    elif threshold is not None:
        labels = fcluster(tree, threshold, criterion="distance")
    else:
        if n < 3:
            raise GtsError(f"choosing k by silhouette needs at least 3 languages, not {n}; give --k")
        candidates = [fcluster(tree, kk, criterion="maxclust") for kk in range(2, n)]
        labels = max(candidates, key=lambda lab: (round(silhouette(distance, lab), 12), -len(set(lab))))
    return _groups_from_labels(labels)


METHODS = typing.get_args(GroupingMethod)


def by_method(method: str, distance: np.ndarray, k: Optional[int], threshold: Optional[float] = None
              ) -> list[list[int]]:
    """Groups by one of ``METHODS`` (``gts plan --method``; ``threshold`` is agglomerative's)."""
    if method == "agglomerative":
        return agglomerative(distance, k, threshold)
    rules = {"balanced": balanced, "balanced-exhaustive": balanced_exhaustive, "balanced-greedy": balanced_greedy}
    if method not in rules:
        raise GtsError(f"grouping method {method!r}: expected one of {', '.join(METHODS)}")
    return rules[method](distance, k)


def _groups_from_labels(labels) -> list[list[int]]:
    groups: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        groups.setdefault(int(label), []).append(index)
    return sorted(groups.values())  # ordered by their first language


def from_map(mapping: dict[str, int], languages: list[str], source: str) -> list[list[int]]:
    """Groups from a user's language -> group map, which must cover exactly the languages."""
    missing = [lang for lang in languages if lang not in mapping]
    extra = [lang for lang in mapping if lang not in languages]
    if missing or extra:
        raise GtsError(f"{source}: the map must name exactly the probed languages"
                       f"{'; missing ' + ', '.join(missing) if missing else ''}"
                       f"{'; not probed ' + ', '.join(extra) if extra else ''}")
    labels = sorted(set(mapping.values()), key=str)
    if not all(isinstance(g, int) and not isinstance(g, bool) for g in labels) or sorted(labels) != list(
            range(len(labels))):
        raise GtsError(f"{source}: group ids must be the integers 0..{len(labels) - 1}, each used; got {labels}")
    return [[i for i, lang in enumerate(languages) if mapping[lang] == g] for g in range(len(labels))]
