"""The comparison's words: "beats" only beyond the spread over training seeds."""
import pytest

from gts_megatron.experiment.seeds import spread, verdict


@pytest.mark.parametrize("gts, other, word", [
    ([10.0, 10.2, 10.1], [12.0, 12.3, 11.9], "beats"),       # the intervals do not overlap
    ([10.0, 11.0, 12.0], [11.5, 12.5, 13.0], "level with"),  # lower on average, but within the spread
    ([12.0, 12.3, 11.9], [10.0, 10.2, 10.1], "loses to"),
])
def test_gts_beats_an_arm_only_beyond_the_seed_spread(gts, other, word):
    result = verdict(spread(gts), spread(other))
    assert result["word"] == word and result["seeds"] == 3
    assert result["seed_wins"] == sum(g < o for g, o in zip(gts, other))
