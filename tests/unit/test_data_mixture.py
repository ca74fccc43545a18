"""Language-aware sampling on real megatron-core datasets, and the synthetic planted families."""
import numpy as np
import pytest

from gts_megatron.config import SyntheticDataConfig
from gts_megatron.data.families import EOD, language_chains, write_synthetic
from gts_megatron.data.manifest import Manifest, TokenizerInfo, write_manifest
from gts_megatron.data.mixture import LanguageMixture
from gts_megatron.data.prepare import SplitPlan, SplitWriter, sample_weights

SIZES = {"aa": 400, "bb": 60, "cc": 12}  # documents per language: very unequal
BAND = 100  # language k writes only tokens k*BAND+1 .. (k+1)*BAND, so a sample shows its language


@pytest.fixture(scope="module", autouse=True)
def process_group():
    """megatron's dataset builders coordinate through torch.distributed: a real 1-rank gloo group."""
    import torch.distributed as dist

    from gts_megatron.runtime.distributed import free_port

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.fixture(scope="module")
def banded(tmp_path_factory):
    """A data directory whose languages differ in size and use disjoint token bands."""
    out = tmp_path_factory.mktemp("banded")
    rng = np.random.default_rng(0)
    data = {}
    for k, (lang, docs) in enumerate(SIZES.items()):
        writer = SplitWriter(out, lang, SplitPlan(2, 2).assign(docs, 0), 512)
        for _ in range(docs):
            writer.add(list(rng.integers(k * BAND + 1, (k + 1) * BAND + 1, size=int(rng.integers(20, 60)))) + [EOD])
        data[lang] = writer.finish()
    write_manifest(out, Manifest(languages=list(SIZES), data=data,
                                 tokenizer=TokenizerInfo(kind="none", vocab_size=512, eod=EOD)))
    return out


def mixture(path, cache, alpha=0.3, samples=2000, groups=None, seed=5):
    return LanguageMixture(path, None, alpha, 16, seed, samples, cache, language_to_group=groups)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_languages_are_mixed_by_tokens_to_the_alpha(banded, tmp_path, alpha):
    mix = mixture(banded, tmp_path, alpha)
    tokens = {lang: mix.manifest.tokens(lang) for lang in SIZES}
    expected = np.array([t ** alpha for t in tokens.values()])
    expected /= expected.sum()
    assert np.allclose([mix.weights[lang] for lang in SIZES], expected)
    ids = mix.batch(list(range(2000)))["language_ids"].numpy()
    assert np.abs(np.bincount(ids, minlength=3) / len(ids) - expected).max() < 0.01


def test_every_sample_carries_its_language_and_group(banded, tmp_path):
    mix = mixture(banded, tmp_path, groups={"aa": 0, "bb": 1, "cc": 1})
    batch = mix.batch(list(range(300)))
    assert batch["tokens"].shape == batch["labels"].shape == batch["loss_mask"].shape == (300, 16)
    for tokens, lang in zip(batch["tokens"].numpy(), batch["language_ids"].numpy()):
        content = tokens[tokens != EOD]
        assert ((content > lang * BAND) & (content <= (lang + 1) * BAND)).all()
    assert (batch["group_ids"].numpy() == np.array([0, 1, 1])[batch["language_ids"].numpy()]).all()
    for k, lang in enumerate(SIZES):
        valid = mix.batch([0, 1], f"valid:{lang}")
        assert (valid["language_ids"] == k).all()
        assert ((valid["tokens"] == EOD) | (valid["tokens"] > k * BAND)).all()


def test_order_is_deterministic_and_needs_no_state(banded, tmp_path):
    first = mixture(banded, tmp_path / "one").batch(list(range(100, 140)))
    again = mixture(banded, tmp_path / "two").batch(list(range(100, 140)))  # a fresh index cache
    for key in first:
        assert (first[key] == again[key]).all()
    other_seed = mixture(banded, tmp_path / "three", seed=6).batch(list(range(100, 140)))
    assert not (first["tokens"] == other_seed["tokens"]).all()


def test_a_group_map_must_cover_every_language(banded, tmp_path):
    from gts_megatron.errors import GtsError

    with pytest.raises(GtsError, match="no group for cc"):
        mixture(banded, tmp_path, groups={"aa": 0, "bb": 1})


def test_weights_are_normalised_powers():
    assert sample_weights({"a": 100, "b": 1}, 0.5) == pytest.approx({"a": 10 / 11, "b": 1 / 11})


def test_planted_families_share_transitions_within_and_not_across(tmp_path):
    spec = SyntheticDataConfig(languages=6, families=2, vocab_size=256, documents=20, mutation=0.1, seed=3)
    names, families, chains = language_chains(spec)
    manifest = write_synthetic(spec, tmp_path / "data", log=lambda *_: None)
    assert manifest.families == families and sorted(set(families.values())) == ["family0", "family1"]
    assert sorted(families.values()).count("family0") == 3
    for i, a in enumerate(names):
        for j, b in enumerate(names[i + 1:], start=i + 1):
            shared = (chains[i] == chains[j]).all(axis=1).mean()
            if families[a] == families[b]:
                assert 0.7 < shared < 0.95, (a, b, shared)  # 1 - mutation, twice over
            else:
                assert shared < 0.05, (a, b, shared)
    # the written documents are walks on their own language's chain
    mix = LanguageMixture(tmp_path / "data", None, 0.3, 32, 0, 64, tmp_path / "cache")
    batch = mix.batch(list(range(64)))
    for tokens, lang in zip(batch["tokens"].numpy(), batch["language_ids"].numpy()):
        for prev, nxt in zip(tokens[:-1], tokens[1:]):
            if prev != EOD and nxt != EOD:
                assert nxt in chains[lang, prev]


def test_placement_gives_each_ep_rank_only_its_languages_in_mixture_order(banded, tmp_path):
    from gts_megatron.data.placement import Placement

    # aa alone on EP rank 0; bb and cc (together about half of aa's share) on EP rank 1
    placement = Placement({"aa": 0, "bb": 2, "cc": 3}, num_experts=4, ep_size=2)
    steps, batch = 50, 40  # 2000 samples: 1000 per EP rank
    mix = LanguageMixture(banded, None, 0.3, 16, 5, steps * batch, tmp_path,
                          language_to_group={"aa": 0, "bb": 1, "cc": 1}, placement=placement)
    assert len(mix.train) > steps * batch  # rank 1's languages are rarer (48%): a longer mixture
    owner = np.array([0, 1, 1])
    for edp_size in (1, 2):  # EP x EDP data-parallel ranks
        per_rank = batch // (2 * edp_size)
        seen = {0: [], 1: []}
        for step in range(steps):
            picked = {(e, r): mix.placed.order(e, r)(step * batch, per_rank) for e in (0, 1) for r in range(edp_size)}
            flat = [i for indices in picked.values() for i in indices]
            assert len(flat) == len(set(flat)) == batch  # each sample once in the global batch
            for (e, r), indices in picked.items():
                languages = mix.batch(indices)["language_ids"].numpy()
                assert (owner[languages] == e).all(), (step, e, r)
                seen[e] += indices
        # each stream is the mixture order filtered to the rank's languages, nothing skipped
        ids = mix.train.dataset_index
        for e in (0, 1):
            assert seen[e] == np.flatnonzero(owner[ids] == e)[:steps * batch // 2].tolist()
    # within EP rank 1, bb and cc keep their mixture proportions
    rank1 = mix.batch(seen[1])["language_ids"].numpy()
    share_bb = mix.weights["bb"] / (mix.weights["bb"] + mix.weights["cc"])
    assert abs((rank1 == 1).mean() - share_bb) < 0.01


def test_placement_refuses_an_ep_rank_without_languages(banded, tmp_path):
    from gts_megatron.data.placement import Placement
    from gts_megatron.errors import GtsError

    with pytest.raises(GtsError, match=r"EP rank 1 holds experts 2\.\.3, which no language"):
        LanguageMixture(banded, None, 0.3, 16, 5, 100, tmp_path,
                        placement=Placement({"aa": 0, "bb": 1, "cc": 1}, num_experts=4, ep_size=2))
    with pytest.raises(GtsError, match="no group for cc"):
        LanguageMixture(banded, None, 0.3, 16, 5, 100, tmp_path,
                        placement=Placement({"aa": 0, "bb": 1}, num_experts=2, ep_size=2))
