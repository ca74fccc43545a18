"""Vocabulary padding, apart from the model so that light tools (HF conversion) need no megatron."""
from __future__ import annotations

import math

# Vocabulary rows are padded to a multiple of this, independent of the TP size, so a checkpoint's
# embedding shape (and the loss) does not depend on the layout it was trained with.
VOCAB_PAD_MULTIPLE = 128


def padded_vocab_size(vocab_size: int) -> int:
    """The embedding rows the model allocates for a tokenizer of ``vocab_size`` tokens."""
    return math.ceil(vocab_size / VOCAB_PAD_MULTIPLE) * VOCAB_PAD_MULTIPLE
