// CPU kernels: a stable counting sort by group, then whole-row copies in parallel, each thread
// taking a contiguous run of rows: permute reads its input in order (a scatter), unpermute writes
// its output in order (a gather). Streaming stores into large outputs; a float loop where rows
// are scaled.
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

#include <algorithm>
#include <cstring>
#include <vector>

#include "group_dispatch.h"

namespace gts {
namespace {

// rows per parallel task: a few hundred KB of copying, so threads are not woken for tiny work
int64_t grain(int64_t row_bytes) { return std::max<int64_t>(1, (256 << 10) / std::max<int64_t>(row_bytes, 1)); }

// counts[g] and row_map[t], the row of token t
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
  for (int64_t t = 0; t < n; ++t) {
    row_map[t] = next[ids[t]]++;
  }
}

constexpr int64_t kPrefetchAhead = 2;

// Streaming (non-temporal) 16-byte stores where the output is large: they skip the read for
// ownership of each destination line and keep the output from evicting the rows still to be read,
// which is what makes a large memcpy faster than a plain loop. SSE2 is part of x86-64.
inline void copy_row(char* dst, const char* src, int64_t bytes, bool streaming) {
#if defined(__SSE2__)
  if (streaming && bytes % 16 == 0 && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    auto* d = reinterpret_cast<__m128i*>(dst);
    const auto* s = reinterpret_cast<const __m128i*>(src);
    for (int64_t i = 0; i < bytes / 16; ++i) _mm_stream_si128(d + i, _mm_loadu_si128(s + i));
    return;
  }
#endif
  // a plain loop the compiler vectorises: for rows of a few KB it beats memcpy's dispatch
  if (bytes % 8 == 0 && reinterpret_cast<uintptr_t>(dst) % 8 == 0 && reinterpret_cast<uintptr_t>(src) % 8 == 0) {
    auto* d = reinterpret_cast<int64_t*>(dst);
    const auto* s = reinterpret_cast<const int64_t*>(src);
    for (int64_t i = 0; i < bytes / 8; ++i) d[i] = s[i];
  } else {
    std::memcpy(dst, src, bytes);
  }
}

// streaming stores are weakly ordered: fence them before the output is handed to anyone
inline void end_streaming() {
#if defined(__SSE2__)
  _mm_sfence();
#endif
}

// outputs past the last-level cache: streaming stores pay off
constexpr int64_t kStreamingMin = 8 << 20;

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
    const bool streaming = n * h * es >= kStreamingMin;
    at::parallel_for(0, n, grain(h * es), [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t d = scatter ? row_map[t] : t, s = scatter ? t : row_map[t];
        if (t + kPrefetchAhead < end) {  // rows are scattered: start the next ones' reads early
          const int64_t next = scatter ? t + kPrefetchAhead : row_map[t + kPrefetchAhead];
          for (int64_t line = 0; line < std::min<int64_t>(h * es, 512); line += 64)
            __builtin_prefetch(in + next * src_stride * es + line);
        }
        copy_row(o + d * h * es, in + s * src_stride * es, h * es, streaming);
      }
      if (streaming) end_streaming();
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

// unpermute (gather) and its inverse (scatter, which needs a true permutation)
at::Tensor move_rows_op(const char* op, const at::Tensor& rows, const at::Tensor& row_map,
                        const std::optional<at::Tensor>& weights, bool scatter) {
  check_rows_args(op, rows, row_map, weights);
  const at::Tensor src = rows_view(rows), map = row_map.to(at::kLong).contiguous();
  check_row_map(op, map.const_data_ptr<int64_t>(), map.size(0), /*permutation=*/scatter);
  at::Tensor out = empty_rows(src.size(0), src.size(1), src.options());
  move_rows(src, map.const_data_ptr<int64_t>(), weights, out, scatter);
  return out;
}

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
  at::Tensor permuted = empty_rows(n, src.size(1), src.options());
  // a scatter: the input (often small pages) is read in order, which the TLB and the prefetcher
  // like; the output rows land in recycled huge-page blocks with streaming stores. (A gather by
  // the inverse map ran at half this speed on fresh activations.)
  move_rows(src, row_map.const_data_ptr<int64_t>(), std::nullopt, permuted, /*scatter=*/true);
  return {permuted, counts, row_map};
}

at::Tensor group_unpermute_cpu(const at::Tensor& permuted, const at::Tensor& row_map,
                               const std::optional<at::Tensor>& weights) {
  return move_rows_op("group_unpermute", permuted, row_map, weights, /*scatter=*/false);
}

at::Tensor scatter_rows_cpu(const at::Tensor& rows, const at::Tensor& row_map,
                            const std::optional<at::Tensor>& weights) {
  return move_rows_op("scatter_rows", rows, row_map, weights, /*scatter=*/true);
}

}  // namespace gts
