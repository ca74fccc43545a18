// CPU kernels: a stable counting sort by group, then row copies in parallel (memcpy of whole
// rows, which the C library vectorises; a float loop where rows are scaled by weights).
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstring>
#include <vector>

#include "group_dispatch.h"

namespace gts {
namespace {

// rows per parallel task: a few hundred KB of copying, so threads are not woken for tiny work
int64_t grain(int64_t row_bytes) { return std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(row_bytes, 1)); }

template <typename index_t>
void rank_by_group(const index_t* ids, int64_t n, int64_t num_groups, int64_t* counts, int64_t* row_map) {
  for (int64_t t = 0; t < n; ++t) {
    const int64_t g = ids[t];
    TORCH_CHECK_INDEX(g >= 0 && g < num_groups, "gts::group_permute: group_ids[", t, "] = ", g,
                      " is out of range for num_groups = ", num_groups, " (valid: 0..", num_groups - 1, ")");
    ++counts[g];
  }
  std::vector<int64_t> next(num_groups);
  int64_t offset = 0;
  for (int64_t g = 0; g < num_groups; ++g) {
    next[g] = offset;
    offset += counts[g];
  }
  for (int64_t t = 0; t < n; ++t) row_map[t] = next[ids[t]]++;
}

// Rows must name each output row once; anything else would leave rows unwritten (scatter) or
// read outside the tensor (gather).
void check_row_map(const char* op, const int64_t* row_map, int64_t n, bool permutation) {
  std::vector<bool> seen(permutation ? n : 0);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t r = row_map[t];
    TORCH_CHECK_INDEX(r >= 0 && r < n, "gts::", op, ": row_map[", t, "] = ", r, " is out of range for ", n,
                      " rows (valid: 0..", n - 1, ")");
    if (permutation) {
      TORCH_CHECK_VALUE(!seen[r], "gts::", op, ": row_map is not a permutation (row ", r,
                        " appears twice); pass the row_map that group_permute returned");
      seen[r] = true;
    }
  }
}

// out[dst(t)] = src[src(t)] * w[t], with (dst, src) = (row_map[t], t) to scatter or (t, row_map[t])
// to gather. src may have any row stride; out is contiguous.
void move_rows(const at::Tensor& src, const int64_t* row_map, const std::optional<at::Tensor>& weights,
               at::Tensor& out, bool scatter) {
  const int64_t n = src.size(0), h = src.size(1), src_stride = src.stride(0);
  if (n == 0 || h == 0) return;
  if (!weights.has_value()) {
    const int64_t es = src.element_size();
    const char* in = static_cast<const char*>(src.const_data_ptr());
    char* o = static_cast<char*>(out.mutable_data_ptr());
    at::parallel_for(0, n, grain(h * es), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t d = scatter ? row_map[t] : t, s = scatter ? t : row_map[t];
        std::memcpy(o + d * h * es, in + s * src_stride * es, h * es);
      }
    });
    return;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, src.scalar_type(), "gts_move_rows", [&] {
    // fp64 rows are scaled in fp64 (gradcheck), the others in fp32
    using opmath_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const at::Tensor w = weights->to(c10::CppTypeToScalarType<opmath_t>::value).contiguous();
    const opmath_t* wp = w.const_data_ptr<opmath_t>();
    const scalar_t* in = src.const_data_ptr<scalar_t>();
    scalar_t* o = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, n, grain(h * sizeof(scalar_t)), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t d = scatter ? row_map[t] : t, s = scatter ? t : row_map[t];
        const opmath_t scale = wp[t];
        const scalar_t* a = in + s * src_stride;
        scalar_t* b = o + d * h;
        for (int64_t i = 0; i < h; ++i) b[i] = static_cast<scalar_t>(static_cast<opmath_t>(a[i]) * scale);
      }
    });
  });
}

at::Tensor rows_view(const at::Tensor& t) { return t.stride(1) == 1 ? t : t.contiguous(); }

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> group_permute_cpu(
    const at::Tensor& hidden, const at::Tensor& group_ids, int64_t num_groups) {
  check_permute_args(hidden, group_ids, num_groups);
  const at::Tensor src = rows_view(hidden), ids = group_ids.contiguous();
  const int64_t n = src.size(0);
  at::Tensor counts = at::zeros({num_groups}, ids.options().dtype(at::kLong));
  at::Tensor row_map = at::empty({n}, ids.options().dtype(at::kLong));
  AT_DISPATCH_INDEX_TYPES(ids.scalar_type(), "gts_rank_by_group", [&] {
    rank_by_group<index_t>(ids.const_data_ptr<index_t>(), n, num_groups, counts.mutable_data_ptr<int64_t>(),
                           row_map.mutable_data_ptr<int64_t>());
  });
  at::Tensor permuted = at::empty({n, src.size(1)}, src.options());
  move_rows(src, row_map.const_data_ptr<int64_t>(), std::nullopt, permuted, /*scatter=*/true);
  return {permuted, counts, row_map};
}

at::Tensor group_unpermute_cpu(const at::Tensor& permuted, const at::Tensor& row_map,
                               const std::optional<at::Tensor>& weights) {
  check_rows_args("group_unpermute", permuted, row_map, weights);
  const at::Tensor src = rows_view(permuted), map = row_map.to(at::kLong).contiguous();
  check_row_map("group_unpermute", map.const_data_ptr<int64_t>(), map.size(0), /*permutation=*/false);
  at::Tensor out = at::empty({src.size(0), src.size(1)}, src.options());
  move_rows(src, map.const_data_ptr<int64_t>(), weights, out, /*scatter=*/false);
  return out;
}

at::Tensor scatter_rows_cpu(const at::Tensor& rows, const at::Tensor& row_map,
                            const std::optional<at::Tensor>& weights) {
  check_rows_args("scatter_rows", rows, row_map, weights);
  const at::Tensor src = rows_view(rows), map = row_map.to(at::kLong).contiguous();
  check_row_map("scatter_rows", map.const_data_ptr<int64_t>(), map.size(0), /*permutation=*/true);
  at::Tensor out = at::empty({src.size(0), src.size(1)}, src.options());
  move_rows(src, map.const_data_ptr<int64_t>(), weights, out, /*scatter=*/true);
  return out;
}

}  // namespace gts
