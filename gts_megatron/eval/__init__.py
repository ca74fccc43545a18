"""Stage "eval": per-language perplexity of dense and GtS checkpoints on held-out text.

``gts eval`` scores each language's held-out documents in sliding windows (``windows``), with the
model a checkpoint describes (``load``: dense or GtS, its plan, group or learned routing) and
writes a JSON result plus a table (``perplexity``). The experiment, adaptation and the demo
evaluate through the same function.
"""
from gts_megatron.eval.perplexity import evaluate_checkpoint, format_table

__all__ = ["evaluate_checkpoint", "format_table"]
