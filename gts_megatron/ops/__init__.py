"""Group-routed dispatch ops: the thin layer between csrc/ and the MoE token dispatcher.

``group_permute(hidden [T,H], group_ids [T], num_groups)`` orders the rows by group (stable within
a group) and returns ``(permuted, tokens_per_group [G], row_map [T])`` with
``permuted[row_map[t]] == hidden[t]``; ``group_unpermute(permuted, row_map, weights=None)``
inverts it (``out[t] = permuted[row_map[t]] * weights[t]``).

The kernels are the extension ``gts_megatron._C`` (torch ops ``torch.ops.gts.*``); autograd and
fake (meta) kernels are registered here, so the ops train and trace under torch.compile. Without
the extension (a build without a compiler, say) the same functions run in plain torch, after a
one-time warning.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Optional

import torch

try:
    importlib.import_module("gts_megatron._C")  # registers torch.ops.gts.*
    HAVE_EXTENSION = True
except ImportError as error:  # a source tree not built, or a build without a C++ compiler
    HAVE_EXTENSION, _IMPORT_ERROR = False, error

_warned = False


def _warn_fallback() -> None:
    global _warned
    if not _warned:
        _warned = True
        warnings.warn(f"gts_megatron._C is not built ({_IMPORT_ERROR}); group dispatch runs in plain torch "
                      f"(slower). Rebuild with `bash scripts/setup.sh`.", RuntimeWarning, stacklevel=3)


def group_permute(hidden: torch.Tensor, group_ids: torch.Tensor, num_groups: int):
    """Rows of ``hidden`` ordered by group: (permuted, tokens_per_group, row_map)."""
    if HAVE_EXTENSION:
        return torch.ops.gts.group_permute(hidden, group_ids, num_groups)
    _warn_fallback()
    return reference_group_permute(hidden, group_ids, num_groups)


def group_unpermute(permuted: torch.Tensor, row_map: torch.Tensor, weights: Optional[torch.Tensor] = None):
    """The inverse of :func:`group_permute`, rows optionally scaled by per-token ``weights``."""
    if HAVE_EXTENSION:
        return torch.ops.gts.group_unpermute(permuted, row_map, weights)
    _warn_fallback()
    return reference_group_unpermute(permuted, row_map, weights)


def cpu_output_pool_limit(megabytes: Optional[int] = None) -> int:
    """The limit, in MB, of the pool that recycles the CPU kernels' large outputs (torch has no
    caching allocator on CPU, and zeroing fresh pages costs more than the copy); sets it when
    ``megabytes`` is given (0: no pooling) and returns the previous one. Start a process with
    ``GTS_CPU_OUTPUT_POOL_MB`` to choose it from the outset (default 4096). 0 without the extension."""
    if not HAVE_EXTENSION:
        return 0
    return torch.ops.gts.cpu_output_pool_limit(-1 if megabytes is None else megabytes)


def reference_group_permute(hidden: torch.Tensor, group_ids: torch.Tensor, num_groups: int):
    """Plain-torch group_permute (the fallback, and what the kernels are tested against)."""
    if group_ids.numel() and (int(group_ids.min()) < 0 or int(group_ids.max()) >= num_groups):
        bad = int(((group_ids < 0) | (group_ids >= num_groups)).nonzero()[0])
        raise IndexError(f"group_permute: group_ids[{bad}] = {int(group_ids[bad])} is out of range for "
                         f"num_groups = {num_groups} (valid: 0..{num_groups - 1})")
    order = torch.argsort(group_ids, stable=True)
    row_map = torch.empty_like(order)
    row_map[order] = torch.arange(order.numel(), device=order.device)
    counts = torch.bincount(group_ids.long(), minlength=num_groups)
    return hidden.index_select(0, order), counts, row_map


def reference_group_unpermute(permuted: torch.Tensor, row_map: torch.Tensor,
                              weights: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Plain-torch group_unpermute."""
    out = permuted.index_select(0, row_map.long())
    if weights is None:
        return out
    math = torch.float64 if out.dtype == torch.float64 else torch.float32  # as the kernels scale
    return (out.to(math) * weights.to(math)[:, None]).to(out.dtype)


if HAVE_EXTENSION:
    def _rows_like(rows, row_map, weights=None):
        return rows.new_empty(rows.shape)

    @torch.library.register_fake("gts::group_permute")
    def _group_permute_fake(hidden, group_ids, num_groups):
        return (hidden.new_empty(hidden.shape), group_ids.new_empty((num_groups,), dtype=torch.long),
                group_ids.new_empty(group_ids.shape, dtype=torch.long))

    torch.library.register_fake("gts::group_unpermute")(_rows_like)
    torch.library.register_fake("gts::scatter_rows")(_rows_like)

    def _save_rows(ctx, inputs, output):
        rows, row_map, weights = inputs
        ctx.save_for_backward(rows, row_map, weights)
        ctx.weights_given = weights is not None

    def _weights_grad(ctx, grad, other):
        """d(loss)/d(weights[t]) = <grad row t, the unscaled row t moved>, in the weights' dtype."""
        if not ctx.weights_given or not ctx.needs_input_grad[2]:
            return None
        weights = ctx.saved_tensors[2]
        math = torch.float64 if weights.dtype == torch.float64 else torch.float32
        return (grad.to(math) * other.to(math)).sum(-1).to(weights.dtype)

    def _group_permute_setup(ctx, inputs, output):
        ctx.save_for_backward(output[2])

    def _group_permute_backward(ctx, grad_permuted, _grad_counts, _grad_row_map):
        (row_map,) = ctx.saved_tensors
        return torch.ops.gts.group_unpermute(grad_permuted.contiguous(), row_map, None), None, None

    def _group_unpermute_backward(ctx, grad):
        permuted, row_map, weights = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rows = torch.ops.gts.scatter_rows(grad, row_map, weights) if ctx.needs_input_grad[0] else None
        grad_weights = (_weights_grad(ctx, grad, torch.ops.gts.group_unpermute(permuted, row_map, None))
                        if ctx.weights_given else None)
        return grad_rows, None, grad_weights

    def _scatter_rows_backward(ctx, grad):
        rows, row_map, weights = ctx.saved_tensors
        grad = grad.contiguous()
        grad_rows = torch.ops.gts.group_unpermute(grad, row_map, weights) if ctx.needs_input_grad[0] else None
        grad_weights = (_weights_grad(ctx, torch.ops.gts.group_unpermute(grad, row_map, None), rows)
                        if ctx.weights_given else None)
        return grad_rows, None, grad_weights

    torch.library.register_autograd("gts::group_permute", _group_permute_backward, setup_context=_group_permute_setup)
    torch.library.register_autograd("gts::group_unpermute", _group_unpermute_backward, setup_context=_save_rows)
    torch.library.register_autograd("gts::scatter_rows", _scatter_rows_backward, setup_context=_save_rows)
