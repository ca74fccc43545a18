"""Evaluation windows: every target scored once, with its true context."""
from __future__ import annotations

import numpy as np
import pytest

from gts_megatron.errors import GtsError
from gts_megatron.eval.windows import sliding_windows


@pytest.mark.parametrize("length, window, stride", [(2, 8, 4), (9, 8, 8), (100, 8, 3), (101, 16, 16), (57, 5, 1)])
def test_sliding_windows_score_every_target_once_with_its_true_context(length, window, stride):
    stream = np.arange(1000, 1000 + length)
    w = sliding_windows(stream, window, stride, pad_id=0)
    scored_targets = w.targets[w.scored].tolist()
    assert sorted(scored_targets) == stream[1:].tolist()  # every token after the first, exactly once
    for row in range(len(w)):  # each target follows its input (the previous token of the stream)
        cols = w.scored[row].nonzero().flatten()
        assert (w.targets[row, cols] == w.inputs[row, cols] + 1).all()
        if row > 0 and stride < window:  # later windows score only tokens with >= window - stride context
            assert int(cols.min()) >= window - stride


def test_sliding_windows_refuse_a_stride_longer_than_the_window():
    with pytest.raises(GtsError, match="stride 9 must be between 1 and the window 8"):
        sliding_windows(np.arange(20), 8, 9, pad_id=0)
