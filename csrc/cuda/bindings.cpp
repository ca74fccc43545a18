// CUDA implementations of the gts:: ops: argument checks, allocation on the current stream, the
// kernels of kernels.cu, and (in checked mode, the default) one read of the kernels' error flag
// so a bad group id or row map raises instead of leaving rows unwritten.
// GTS_DISPATCH_UNCHECKED=1 skips that read (and its host sync); memory is never touched out of
// range either way.
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <torch/library.h>

#include <cstdlib>
#include <cstring>

#include "../group_dispatch.h"
#include "kernels.cuh"

namespace gts {
namespace {

bool checked() {
  static const bool value = [] {
    const char* env = std::getenv("GTS_DISPATCH_UNCHECKED");
    return env == nullptr || std::strcmp(env, "1") != 0;
  }();
  return value;
}

void raise_if_flagged(const at::Tensor& flag, const char* op, const char* what) {
  if (!checked()) return;
  const int first_bad = flag.item<int>();
  TORCH_CHECK_INDEX(first_bad == 0, "gts::", op, ": ", what, "[", first_bad - 1, "] is out of range");
}

template <typename scalar_t>
using Native = std::conditional_t<std::is_same_v<scalar_t, at::BFloat16>, __nv_bfloat16,
                                  std::conditional_t<std::is_same_v<scalar_t, at::Half>, __half, scalar_t>>;

void move_rows(const at::Tensor& src, const at::Tensor& row_map, const std::optional<at::Tensor>& weights,
               at::Tensor& out, bool scatter, at::Tensor& flag) {
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "gts_move_rows_cuda", [&] {
    using native_t = Native<scalar_t>;
    using math_t = cuda::OpMath<native_t>;
    at::Tensor w;
    if (weights.has_value()) w = weights->to(c10::CppTypeToScalarType<math_t>::value).contiguous();
    cuda::move_rows<native_t>(reinterpret_cast<const native_t*>(src.const_data_ptr()), src.stride(0),
                              row_map.const_data_ptr<int64_t>(), w.defined() ? w.const_data_ptr<math_t>() : nullptr,
                              reinterpret_cast<native_t*>(out.mutable_data_ptr()), src.size(0), src.size(1), scatter,
                              flag.mutable_data_ptr<int>(), stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_permute_cuda(
    const at::Tensor& hidden, const at::Tensor& group_ids, int64_t num_groups) {
  check_permute_args(hidden, group_ids, num_groups);
  c10::cuda::CUDAGuard guard(hidden.device());
  const at::Tensor src = rows_view(hidden), ids = group_ids.contiguous();
  const int64_t n = src.size(0);
  auto long_opts = ids.options().dtype(at::kLong);
  at::Tensor counts = at::empty({num_groups}, long_opts), row_map = at::empty({n}, long_opts);
  at::Tensor work = at::empty({cuda::group_rank_workspace(n, num_groups)}, ids.options().dtype(at::kInt));
  at::Tensor flag = at::zeros({1}, ids.options().dtype(at::kInt));
  auto stream = c10::cuda::getCurrentCUDAStream().stream();
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "gts_group_rank_cuda", [&] {
    cuda::group_rank<index_t>(ids.const_data_ptr<index_t>(), n, num_groups, counts.mutable_data_ptr<int64_t>(),
                              row_map.mutable_data_ptr<int64_t>(), work.mutable_data_ptr<int>(),
                              flag.mutable_data_ptr<int>(), stream);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  raise_if_flagged(flag, "group_permute", "group_ids");
  at::Tensor permuted = at::empty({n, src.size(1)}, src.options());
  // rows of bad ids map to -1 and are skipped: unchecked mode leaves them unwritten, no more
  move_rows(src, row_map, std::nullopt, permuted, /*scatter=*/true, flag);
  return {permuted, counts, row_map};
}

at::Tensor move_rows_op(const char* op, const at::Tensor& rows, const at::Tensor& row_map,
                        const std::optional<at::Tensor>& weights, bool scatter) {
  check_rows_args(op, rows, row_map, weights);
  c10::cuda::CUDAGuard guard(rows.device());
  const at::Tensor src = rows_view(rows), map = row_map.to(at::kLong).contiguous();
  at::Tensor out = at::empty({src.size(0), src.size(1)}, src.options());
  at::Tensor flag = at::zeros({1}, map.options().dtype(at::kInt));
  move_rows(src, map, weights, out, scatter, flag);
  raise_if_flagged(flag, op, "row_map");
  return out;
}

at::Tensor group_unpermute_cuda(const at::Tensor& permuted, const at::Tensor& row_map,
                                const std::optional<at::Tensor>& weights) {
  return move_rows_op("group_unpermute", permuted, row_map, weights, /*scatter=*/false);
}

at::Tensor scatter_rows_cuda(const at::Tensor& rows, const at::Tensor& row_map,
                             const std::optional<at::Tensor>& weights) {
  return move_rows_op("scatter_rows", rows, row_map, weights, /*scatter=*/true);
}

}  // namespace
}  // namespace gts

TORCH_LIBRARY_IMPL(gts, CUDA, m) {
  m.impl("group_permute", &gts::group_permute_cuda);
  m.impl("group_unpermute", &gts::group_unpermute_cuda);
  m.impl("scatter_rows", &gts::scatter_rows_cuda);
}
