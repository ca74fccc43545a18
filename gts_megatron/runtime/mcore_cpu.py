"""Everything megatron-core 0.16.1 needs to train on a CPU-only torch with gloo. The only module
that patches megatron-core; :func:`apply` is called by the runtime when CUDA is unavailable.

megatron-core assumes CUDA in a handful of places. Each patch below says which and why; none edits
megatron's source, all are process-global and idempotent:

- ``cuda``: ``torch.cuda.current_device()`` is the default device of many megatron buffers;
  streams, events, synchronize and empty_cache become no-ops (CPU ops are synchronous).
- ``rng``: megatron's CudaRNGStatesTracker keeps CUDA generator states for tensor-parallel
  dropout and init; on CPU the tracker forks the CPU generator instead.
- ``mask``: the default causal and sliding-window masks are built with ``device="cuda"``.
- ``te``: moe_utils references ``te_general_gemm`` that only exists when TransformerEngine
  imports (a NameError in the router without TE).
- ``splits``: the alltoall dispatcher converts split sizes to numpy only for CUDA tensors, and
  ``all_to_all_single`` rejects tensor split sizes.
- ``norm_sp``: the torch (non-apex) norm refuses sequence parallelism, although a per-token norm
  only needs its grads all-reduced over TP, which finalize_model_grads does for parameters
  tagged ``sequence_parallel`` (as apex's norm tags them).
- ``clip``: clip_grad_by_total_norm_fp32 insists on ``torch.cuda.FloatTensor`` grads.
- ``device``: megatron's DDP, optimizer and schedules allocate with ``device="cuda"``, ``.cuda()``
  and ``pin_memory=True`` in ~15 places; a TorchFunctionMode rewrites those to the CPU.
- ``cuda_type``: the mixed-precision and distributed optimizers check parameters by comparing
  ``Tensor.type()`` strings against ``torch.cuda.*`` names; on CPU those report CUDA names.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch.overrides import TorchFunctionMode

from gts_megatron.errors import GtsError

SUPPORTED_MCORE_VERSION = "0.16.1"
_applied: set[str] = set()


def check_mcore_version() -> None:
    """Refuse to patch a megatron-core these patches were not written and tested for."""
    from megatron.core import package_info

    if package_info.__version__ != SUPPORTED_MCORE_VERSION:
        raise GtsError(
            f"megatron-core {package_info.__version__} is installed, but the CPU compatibility layer "
            f"supports only {SUPPORTED_MCORE_VERSION}; run: pip install megatron-core=={SUPPORTED_MCORE_VERSION}")


class _NoOpEvent:
    def synchronize(self): pass
    def wait(self, *args, **kwargs): pass
    def record(self, *args, **kwargs): pass
    def query(self): return True
    def elapsed_time(self, other): return 0.0


class _NoOpStream:
    def __init__(self, *args, **kwargs): pass
    def wait_stream(self, *args, **kwargs): pass
    def wait_event(self, *args, **kwargs): pass
    def synchronize(self): pass
    def record_event(self, *args, **kwargs): return _NoOpEvent()
    def __eq__(self, other): return isinstance(other, _NoOpStream)
    def __hash__(self): return 0


_STREAM = _NoOpStream()


def _patch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: torch.device("cpu")
    cuda.synchronize = lambda *args, **kwargs: None
    cuda.Stream = _NoOpStream
    cuda.current_stream = lambda *args, **kwargs: _STREAM
    cuda.stream = lambda *args, **kwargs: contextlib.nullcontext()
    cuda.empty_cache = lambda: None
    cuda.Event = _NoOpEvent


def _patch_rng() -> None:
    from megatron.core.tensor_parallel import random as mrandom

    class CpuRNGStatesTracker(mrandom.CudaRNGStatesTracker):
        """Named RNG states backed by the CPU generator (same interface as megatron's tracker)."""

        def add(self, name, seed):
            self._is_initialized = True
            if seed in self.seeds_:
                raise RuntimeError(f"seed {seed} already exists")
            if name in self.states_:
                raise RuntimeError(f"rng state {name} already exists")
            self.seeds_.add(seed)
            saved = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(saved)

        @contextlib.contextmanager
        def fork(self, name=mrandom._MODEL_PARALLEL_RNG_TRACKER_NAME):
            if name not in self.states_:
                raise RuntimeError(f"rng state {name} is not added")
            saved = torch.get_rng_state()
            torch.set_rng_state(self.states_[name])
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                torch.set_rng_state(saved)

    mrandom.CudaRNGStatesTracker = CpuRNGStatesTracker
    mrandom._CUDA_RNG_STATE_TRACKER = CpuRNGStatesTracker()
    mrandom._CUDA_RNG_STATE_TRACKER_INITIALIZED = True
    # activation recomputation saves and restores the "cuda" state; the tracker forks handle CPU
    mrandom._get_cuda_rng_state = lambda *args, **kwargs: torch.get_rng_state()
    mrandom._set_cuda_rng_state = lambda *args, **kwargs: None


def _patch_masks() -> None:
    from megatron.core.fusions import fused_softmax
    from megatron.core.transformer import utils

    @functools.lru_cache(maxsize=32)
    def get_default_causal_mask(sq):
        return torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1)

    def get_sliding_window_causal_mask(sq, skv, window_size):
        upper = torch.triu(torch.ones(sq, skv, dtype=torch.bool), diagonal=skv - sq - window_size[0])
        return ~torch.tril(upper, diagonal=skv - sq + window_size[1])

    for module in (utils, fused_softmax):
        module.get_default_causal_mask = get_default_causal_mask
        module.get_sliding_window_causal_mask = get_sliding_window_causal_mask


def _patch_te_symbols() -> None:
    from megatron.core.transformer.moe import moe_utils

    if not getattr(moe_utils, "HAVE_TE", False) and not hasattr(moe_utils, "te_general_gemm"):
        moe_utils.te_general_gemm = None


def _patch_alltoall_splits() -> None:
    from megatron.core.transformer.moe import moe_utils, token_dispatcher

    original = moe_utils.maybe_move_tensor_to_cpu

    def maybe_move_tensor_to_cpu(tensor, as_numpy=False, record_stream=False):
        if as_numpy and torch.is_tensor(tensor) and not tensor.is_cuda:
            return tensor.numpy()
        return original(tensor, as_numpy=as_numpy, record_stream=record_stream)

    moe_utils.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu
    token_dispatcher.maybe_move_tensor_to_cpu = maybe_move_tensor_to_cpu


def _patch_norm_sequence_parallel() -> None:
    from megatron.core.transformer import torch_norm

    wrapped = torch_norm.WrappedTorchNorm
    original_new = wrapped.__new__

    def __new__(cls, config, hidden_size, eps=1e-5, **kwargs):
        sequence_parallel = config.sequence_parallel
        config.sequence_parallel = False  # only to get past the assertion
        try:
            norm = original_new(cls, config, hidden_size, eps, **kwargs)
        finally:
            config.sequence_parallel = sequence_parallel
        for param in norm.parameters():
            param.sequence_parallel = sequence_parallel
        return norm

    wrapped.__new__ = staticmethod(__new__)


def _patch_clip_grads() -> None:
    from megatron.core.optimizer import clip_grads, optimizer
    from megatron.core.utils import to_local_if_dtensor

    def clip_grad_by_total_norm_fp32(parameters, max_norm, total_norm, use_decoupled_grad=False):
        if isinstance(parameters, torch.Tensor):
            parameters = [parameters]
        attr = "decoupled_grad" if use_decoupled_grad else "grad"
        grads = [to_local_if_dtensor(getattr(p, attr)).detach()
                 for p in parameters if getattr(p, attr, None) is not None]
        coeff = max_norm / (total_norm + 1.0e-6)
        if coeff < 1.0:
            torch._foreach_mul_(grads, coeff)

    clip_grads.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32
    optimizer.clip_grad_by_total_norm_fp32 = clip_grad_by_total_norm_fp32


def _is_cuda(device) -> bool:
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, torch.device) and device.type == "cuda"


class _CudaToCpuMode(TorchFunctionMode):
    """Redirects device='cuda', .cuda(), .to('cuda') and pin_memory=True to the CPU."""


    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": "cpu"}
        if kwargs.get("pin_memory"):
            kwargs = {**kwargs, "pin_memory": False}
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda(args[1]):
            args = (args[0], "cpu", *args[2:])
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name if name.startswith("torch.cuda.") else name.replace("torch.", "torch.cuda.", 1)
        return func(*args, **kwargs)


_mode: _CudaToCpuMode | None = None


def _enter_cpu_device_mode() -> None:
    global _mode
    if _mode is None:
        _mode = _CudaToCpuMode()
        _mode.__enter__()  # stays active for the life of the process


_PATCHES = {
    "cuda": _patch_cuda,
    "rng": _patch_rng,
    "mask": _patch_masks,
    "te": _patch_te_symbols,
    "splits": _patch_alltoall_splits,
    "norm_sp": _patch_norm_sequence_parallel,
    "clip": _patch_clip_grads,
}


def apply() -> None:
    """Patch megatron-core for CPU/gloo. Call after init_process_group, before building models."""
    if torch.cuda.is_available() and "cuda" not in _applied:
        return  # a real GPU: megatron-core runs unpatched
    check_mcore_version()
    for name, patch in _PATCHES.items():
        if name not in _applied:
            patch()
            _applied.add(name)
    _enter_cpu_device_mode()
