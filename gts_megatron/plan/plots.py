"""The plan's figures (matplotlib PNG) with their numbers beside them (CSV/JSON)."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Optional

import numpy as np

from gts_megatron.figures import pyplot, save_figure


def write_similarity(out: Path, languages: list[str], similarity: np.ndarray, groups: list[list[int]],
                     figures: bool = True) -> None:
    """similarity.csv, and similarity.png: the heatmap ordered by group, with its dendrogram."""
    from scipy.cluster.hierarchy import dendrogram, linkage
    from scipy.spatial.distance import squareform

    with open(out / "similarity.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["language", *languages])
        for lang, row in zip(languages, similarity):
            writer.writerow([lang, *[f"{v:.6f}" for v in row]])
    if not figures:
        return
    plt = pyplot()
    order = [i for group in groups for i in group]
    n = len(languages)
    # capped: a 128-language figure stays readable at 16 x 14 inches and quick to draw
    fig, (tree_ax, heat_ax) = plt.subplots(1, 2, figsize=(min(4 + 0.25 * n, 16), min(2 + 0.22 * n, 14)),
                                           gridspec_kw={"width_ratios": [1, 4]})
    font = 7 if n <= 48 else 4
    if n > 1:
        distance = np.clip(1 - similarity, 0, 2)
        np.fill_diagonal(distance, 0)
        dendrogram(linkage(squareform((distance + distance.T) / 2, checks=False), method="average"),
                   orientation="left", labels=languages, no_labels=n > 48, ax=tree_ax, color_threshold=0,
                   leaf_font_size=font)
    tree_ax.set_title("average linkage", fontsize=8)
    image = heat_ax.imshow(similarity[np.ix_(order, order)], cmap="viridis", vmin=-1, vmax=1)
    heat_ax.set_xticks(range(n), [languages[i] for i in order], rotation=90, fontsize=font)
    heat_ax.set_yticks(range(n), [languages[i] for i in order], fontsize=font)
    edge = -0.5
    for group in groups:  # outline each group's block
        heat_ax.add_patch(plt.Rectangle((edge, edge), len(group), len(group), fill=False, color="white", lw=1.5))
        edge += len(group)
    heat_ax.set_title("cosine similarity of FFN deltas, by group", fontsize=9)
    fig.colorbar(image, ax=heat_ax, shrink=0.8)
    fig.tight_layout()
    save_figure(fig, out / "similarity.png", dpi=100)


def write_deviation_profile(out: Path, matrix: np.ndarray, profile: np.ndarray, selected: list[int],
                            epsilon: Optional[float], attention: Optional[np.ndarray] = None,
                            figures: bool = True) -> None:
    """deviations.json and deviations.png: normalised mean FFN deviation per layer, the epsilon line."""
    data = {"mean_ffn": matrix.mean(axis=0).tolist(), "normalised_ffn": profile.tolist(),
            "selected_layers": selected, "epsilon": epsilon}
    if attention is not None:
        data["mean_attention"] = attention.mean(axis=0).tolist()
    (out / "deviations.json").write_text(json.dumps(data, indent=1) + "\n")
    if not figures:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(5, 0.3 * len(profile)), 3))
    colors = ["tab:red" if i in selected else "tab:gray" for i in range(len(profile))]
    ax.bar(range(len(profile)), profile, color=colors)
    if epsilon is not None:
        ax.axhline(epsilon, color="black", ls="--", lw=1, label=f"epsilon {epsilon}")
        ax.legend()
    ax.set_xlabel("layer")
    ax.set_ylabel("mean FFN deviation (min-max)")
    ax.set_title(f"MoE layers: {selected}")
    fig.tight_layout()
    save_figure(fig, out / "deviations.png", dpi=120)


def write_groups(out: Path, languages: list[str], groups: list[list[int]], figures: bool = True) -> None:
    """groups.json and groups.png: which languages each group (expert) holds."""
    named = [[languages[i] for i in group] for group in groups]
    (out / "groups.json").write_text(json.dumps(named, indent=1) + "\n")
    if not figures:
        return
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 0.4 + 0.35 * len(groups)))
    for g, members in enumerate(named):
        ax.barh(g, len(members), color=plt.cm.tab20(g % 20))
        ax.text(0.1, g, " ".join(members), va="center", fontsize=7)
    ax.set_yticks(range(len(groups)), [f"group {g}" for g in range(len(groups))])
    ax.invert_yaxis()
    ax.set_xlabel("languages")
    fig.tight_layout()
    save_figure(fig, out / "groups.png", dpi=120)
