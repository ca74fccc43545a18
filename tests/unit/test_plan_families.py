"""The language-family table and how `gts plan` reports its groups against it."""
import json

import pytest

from gts_megatron.bench.plan import planted_probe_store
from gts_megatron.data.demo_corpus import VERSIONS
from gts_megatron.plan.families import (FAMILIES, adjusted_rand_index, best_reachable_ari, family_agreement,
                                        family_of)
from tests.conftest import run_gts


def test_the_table_covers_every_demo_corpus_language_with_genus_and_family():
    assert len(VERSIONS) == 22
    for lang in VERSIONS:
        assert family_of(lang, "family") and family_of(lang, "genus"), lang
    assert family_of("es") == family_of("ru") == "Indo-European" and family_of("es", "genus") == "Romance"
    assert family_of("pt-BR", "genus") == family_of("pt_PT", "genus") == "Romance"
    assert family_of("xx") is None
    assert all(genus and family for genus, family in FAMILIES.values())


def test_ari_is_one_for_the_same_partition_and_near_zero_for_unrelated_ones():
    assert adjusted_rand_index([0, 0, 1, 1, 2, 2], [2, 2, 0, 0, 1, 1]) == 1.0
    assert adjusted_rand_index([0, 0, 0, 1, 1, 1], [0, 1, 0, 1, 0, 1]) < 0
    # four equal families, groups of the same sizes: following them exactly is reachable
    assert best_reachable_ari([0, 0, 1, 1, 2, 2, 3, 3], [2, 2, 2, 2]) == 1.0
    # one family of seven and four singletons cannot be followed by groups of 3, 3, 3 and 2
    assert best_reachable_ari([0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4], [3, 3, 3, 2]) < 0.5


def test_agreement_names_unknown_languages_and_the_best_reachable_ari():
    agreement = family_agreement({"es": 0, "fr": 0, "it": 0, "de": 1, "en": 1, "nl": 1, "zz": 1})
    assert agreement["unknown"] == ["zz"]
    assert agreement["genus"]["ari"] == agreement["genus"]["best_reachable"] == 1.0
    assert agreement["family"]["of"]["de"] == "Indo-European"


def test_plan_reports_its_groups_against_the_families(tmp_path):
    names = ["es", "de", "ru", "fr", "en", "uk", "it", "nl", "pl"]  # dealt to 3 planted families: by genus
    planted_probe_store(tmp_path / "probes", languages=9, families=3, layers=6, sketch_size=256, names=names)
    out = run_gts("plan", "--probes", str(tmp_path / "probes"), "--k", "3", "--out", str(tmp_path / "plan"))
    families = json.loads((tmp_path / "plan" / "families.json").read_text())
    assert families["genus"]["ari"] == 1.0 and families["unknown"] == []
    assert "groups against language families: family ARI" in out.stdout and "genus ARI 1.00" in out.stdout


@pytest.mark.parametrize("groups", [{"a1": 0, "b2": 1}, {"es": 0}])
def test_agreement_needs_two_known_languages(groups):
    assert "family" not in family_agreement(groups)
