"""The csrc group-dispatch ops (against a plain-torch reference, gradcheck, registrations, bad
input, the fallback), the CUDA sources' nvcc compile, and group-aware placement at EP=2. The
dispatcher against megatron's alltoall in training loss at EP=2 is in integration/test_expand_train_gts.py's layouts; the CUDA kernels are in test_ops_dispatch_gpu.py."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gts_megatron import ops
from gts_megatron.errors import GtsError
from gts_megatron.runtime.distributed import free_port

ROOT = Path(__file__).resolve().parents[2]

SHAPES = [(0, 4, 3), (1, 1, 1), (7, 3, 1), (33, 16, 8), (300, 64, 5), (1000, 8, 200)]


def cases():
    for tokens, hidden, groups in SHAPES:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            yield tokens, hidden, groups, dtype


@pytest.mark.parametrize("tokens,hidden,groups,dtype", list(cases()))
def test_ops_equal_the_torch_reference(tokens, hidden, groups, dtype):
    g = torch.Generator().manual_seed(tokens * 31 + hidden)
    # a wider tensor sliced: rows with a stride, and groups left empty on purpose
    wide = torch.randn(tokens, hidden + 5, generator=g).to(dtype)
    x = wide[:, 2:2 + hidden]
    ids = torch.randint(0, max(1, groups - 1), (tokens,), generator=g)
    for id_dtype in (torch.int64, torch.int32):
        permuted, counts, row_map = ops.group_permute(x, ids.to(id_dtype), groups)
        want_p, want_c, want_r = ops.reference_group_permute(x, ids, groups)
        assert torch.equal(permuted, want_p) and torch.equal(counts, want_c) and torch.equal(row_map, want_r)
    if groups > 1 and tokens:
        assert counts[-1] == 0  # the empty group
    assert torch.equal(ops.group_unpermute(permuted, row_map), x)
    weights = torch.rand(tokens, generator=g)
    assert torch.equal(ops.group_unpermute(permuted, row_map, weights),
                       ops.reference_group_unpermute(permuted, row_map, weights))
    transposed = torch.randn(hidden, tokens, generator=g).to(dtype).t()  # column-major rows
    assert torch.equal(ops.group_permute(transposed, ids, groups)[0], ops.reference_group_permute(transposed, ids, groups)[0])


def test_gradients_in_fp64_and_registrations():
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(40, 6, dtype=torch.float64, generator=g, requires_grad=True)
    weights = torch.rand(40, dtype=torch.float64, generator=g, requires_grad=True)
    ids = torch.randint(0, 4, (40,), generator=g)

    def round_trip(h, w):
        permuted, _, row_map = ops.group_permute(h, ids, 4)
        return ops.group_unpermute(permuted * 3, row_map, w)

    assert torch.autograd.gradcheck(round_trip, (hidden, weights))
    assert torch.autograd.gradgradcheck(round_trip, (hidden, weights))
    # schema, fake (meta) kernels for torch.compile, autograd registration, AOT dispatch
    permuted, _, row_map = ops.group_permute(hidden.detach(), ids, 4)
    for op, args in [(torch.ops.gts.group_permute.default, (hidden.detach().float().requires_grad_(), ids, 4)),
                     (torch.ops.gts.group_unpermute.default, (permuted.float().requires_grad_(), row_map,
                                                              weights.detach().float().requires_grad_())),
                     (torch.ops.gts.scatter_rows.default, (permuted.float().requires_grad_(), row_map, None))]:
        result = torch.library.opcheck(op, args)
        assert set(result.values()) == {"SUCCESS"}, (op, result)


def test_recycled_cpu_outputs_never_overwrite_a_tensor_still_held():
    """Large CPU outputs come from a pool of freed ones; a held output, a view of one, or one
    autograd saved must never be handed out again."""
    gen = torch.Generator().manual_seed(0)
    hidden = [torch.randn(2048, 512, generator=gen) for _ in range(4)]  # 4 MB rows: pooled
    ids = torch.randint(0, 5, (2048,), generator=gen)
    expected = [ops.reference_group_permute(h, ids, 5)[0] for h in hidden]
    held, _, _ = ops.group_permute(hidden[0], ids, 5)
    view = ops.group_permute(hidden[1], ids, 5)[0][100:200]  # only a view of the output survives
    leaf = hidden[2].clone().requires_grad_()
    saved = ops.group_unpermute(ops.group_permute(leaf, ids, 5)[0], ids.argsort(stable=True).argsort(),
                                torch.ones(2048, requires_grad=True))  # autograd holds the permuted rows
    for _ in range(3):  # freed outputs are recycled: these may land in earlier results' blocks
        again, _, _ = ops.group_permute(hidden[3], ids, 5)
        assert torch.equal(again, expected[3])
        del again
    assert torch.equal(held, expected[0]) and torch.equal(view, expected[1][100:200])
    saved.sum().backward()
    assert torch.equal(leaf.grad, torch.ones_like(leaf))
    previous = ops.cpu_output_pool_limit(0)
    try:
        assert previous == 4096 and ops.cpu_output_pool_limit() == 0
        assert torch.equal(ops.group_permute(hidden[3], ids, 5)[0], expected[3])
    finally:
        ops.cpu_output_pool_limit(previous)



@pytest.mark.parametrize("call,error,fragments", [
    (lambda: ops.group_permute(torch.zeros(4, 2), torch.tensor([0, 1, 5, 0]), 3), IndexError,
     ["group_ids[2] = 5", "num_groups = 3", "valid: 0..2"]),
    (lambda: ops.group_permute(torch.zeros(4, 2), torch.tensor([0, -1, 0, 0]), 3), IndexError, ["group_ids[1] = -1"]),
    (lambda: ops.group_permute(torch.zeros(4, 2), torch.zeros(3, dtype=torch.long), 3), ValueError,
     ["group_ids", "one entry per row", "(4 rows)"]),
    (lambda: ops.group_permute(torch.zeros(4, 2, dtype=torch.int32), torch.zeros(4, dtype=torch.long), 3),
     TypeError, ["hidden", "Int", "float32, bfloat16, float16"]),
    (lambda: ops.group_permute(torch.zeros(4), torch.zeros(4, dtype=torch.long), 3), ValueError, ["2-D"]),
    (lambda: ops.group_permute(torch.zeros(4, 2), torch.zeros(4), 3), TypeError, ["group_ids", "int64 or int32"]),
    (lambda: ops.group_permute(torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), 0), ValueError,
     ["num_groups must be >= 1"]),
    (lambda: ops.group_unpermute(torch.zeros(4, 2), torch.tensor([0, 1, 2, 9])), IndexError,
     ["row_map[3] = 9", "valid: 0..3"]),
    (lambda: ops.group_unpermute(torch.zeros(4, 2), torch.arange(4), torch.ones(3)), ValueError,
     ["weights", "one weight per token"]),
    (lambda: torch.ops.gts.scatter_rows(torch.zeros(3, 2), torch.tensor([0, 0, 1]), None), ValueError,
     ["not a permutation"]),
])
def test_bad_input_names_the_argument(call, error, fragments):
    with pytest.raises(error) as raised:
        call()
    message = str(raised.value).splitlines()[0]
    assert all(f in message for f in fragments), message


def test_without_the_extension_the_torch_fallback_warns_once():
    script = ("import sys, warnings; sys.modules['gts_megatron._C'] = None\n"
              "import torch; from gts_megatron import ops\n"
              "assert not ops.HAVE_EXTENSION\n"
              "x = torch.randn(9, 4); ids = torch.tensor([2, 0, 1, 2, 0, 0, 1, 2, 2])\n"
              "with warnings.catch_warnings(record=True) as seen:\n"
              "    warnings.simplefilter('always')\n"
              "    for _ in range(3):\n"
              "        p, c, r = ops.group_permute(x, ids, 3); y = ops.group_unpermute(p, r)\n"
              "assert torch.equal(y, x) and c.tolist() == [3, 2, 4], (y, c)\n"
              "print(len(seen), seen[0].message)\n")
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    count, message = out.stdout.split(" ", 1)
    assert count == "1" and "gts_megatron._C is not built" in message and "plain torch" in message


def _cuda_include() -> Path:
    """The CUDA toolkit's include directory, asked of nvcc itself (it may be a wrapper script)."""
    out = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", "/dev/null", "-o", "/dev/null"],
                         capture_output=True, text=True)
    found = re.search(r'INCLUDES="-I([^"]+)"', out.stdout + out.stderr)
    return Path(found.group(1)) if found else Path("/usr/local/cuda/include")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed (CI machines have it)")
def test_cuda_sources_compile_with_nvcc(tmp_path):
    """Compile only: the kernels for Ampere and Hopper, and the torch bindings' host code."""
    kernels = subprocess.run(
        ["nvcc", "-std=c++17", "-O3", "-gencode", "arch=compute_80,code=sm_80", "-gencode",
         "arch=compute_90,code=sm_90", "-c", str(ROOT / "csrc/cuda/kernels.cu"), "-o", str(tmp_path / "k.o")],
        capture_output=True, text=True)
    assert kernels.returncode == 0, kernels.stderr
    assert (tmp_path / "k.o").stat().st_size > 0
    # the CPU wheel ships c10/cuda headers but not their build-generated macros header
    stub = tmp_path / "stub" / "c10" / "cuda" / "impl"
    stub.mkdir(parents=True)
    (stub / "cuda_cmake_macros.h").write_text("#pragma once\n#define C10_CUDA_BUILD_SHARED_LIBS\n")
    from torch.utils.cpp_extension import include_paths
    cuda_include = _cuda_include()
    bindings = subprocess.run(
        ["g++", "-std=c++20", "-fsyntax-only", str(ROOT / "csrc/cuda/bindings.cpp"), f"-I{tmp_path / 'stub'}",
         *[f"-I{p}" for p in include_paths()], f"-I{cuda_include}"], capture_output=True, text=True)
    assert bindings.returncode == 0, bindings.stderr[-3000:]


def _placement_worker(rank: int, port: int) -> None:
    """One of 2 ranks at EP=2: the same model with and without placement on a batch whose groups
    are this rank's expert must give the same output and gradients; a foreign group is refused."""
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from gts_megatron.config import MoEConfig, ParallelConfig, build_config
    from gts_megatron.model.dispatch import GroupTokenDispatcher
    from gts_megatron.model.gts import ROUTING, build_moe_model
    from gts_megatron.contracts.plan import Plan
    from gts_megatron.runtime.distributed import init_runtime, shutdown_runtime

    parallel = ParallelConfig(expert=2)
    init_runtime(parallel, 7)
    try:
        model_cfg = build_config({"model": "tiny"}, "test").model
        plan = Plan(languages=["a", "b"], num_experts=2, group_to_expert=[0, 1],
                    language_to_group={"a": 0, "b": 1}, moe_layers=[1])
        general, _ = build_moe_model(model_cfg, parallel, MoEConfig(stage="group"), plan)
        placed, _ = build_moe_model(model_cfg, parallel, MoEConfig(stage="group", placement=True), plan)
        placed.load_state_dict(general.state_dict())
        assert isinstance(placed.decoder.layers[1].mlp.token_dispatcher, GroupTokenDispatcher)
        tokens = torch.randint(1, 256, (3, 16), generator=torch.Generator().manual_seed(rank))
        positions = torch.arange(16).expand_as(tokens)
        results = []
        for model in (general, placed):
            ROUTING.begin(torch.full((3,), rank))  # rank r holds expert r = group r
            logits = model(input_ids=tokens, position_ids=positions, attention_mask=None)
            logits.float().square().mean().backward()
            results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
        (out_a, grads_a), (out_b, grads_b) = results
        assert torch.allclose(out_a, out_b, atol=1e-6, rtol=0)
        assert grads_a.keys() == grads_b.keys()
        for name in grads_a:
            assert torch.allclose(grads_a[name], grads_b[name], atol=1e-6, rtol=0), name
        ROUTING.begin(torch.full((3,), 1 - rank))  # the other rank's group
        try:
            placed(input_ids=tokens, position_ids=positions, attention_mask=None)
            raise AssertionError("a foreign group passed under placement")
        except GtsError as error:
            assert f"EP rank {rank} holds experts {rank}..{rank}" in str(error), error
    finally:
        shutdown_runtime()


def test_group_aware_placement_skips_the_all_to_all_and_equals_the_general_path():
    torch.multiprocessing.spawn(_placement_worker, args=(free_port(),), nprocs=2)
