// CUDA group dispatch: a histogram per tile of tokens, a scan of the tile counts into each tile's
// first row per group, a stable rank inside each tile (warp match + per-warp counts), and row
// copies with 16-byte loads and stores. No id or row index is ever used to address memory
// without a range check; a bad one sets an error flag the binding reads in checked mode.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels.cuh"

namespace gts::cuda {
namespace {

constexpr int kWarps = kTileTokens / 32;
constexpr int kMaxSharedGroups = 2048;  // tile histograms in shared memory up to this many groups

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Ints of tile counts before the int64 group starts, rounded up to keep those 8-byte aligned.
int64_t tile_count_ints(int64_t tokens, int64_t num_groups) {
  return ceil_div(ceil_div(tokens, kTileTokens) * num_groups, 2) * 2;
}

template <typename index_t>
__global__ void tile_histogram(const index_t* ids, int64_t tokens, int num_groups, int* tile_counts,
                               int* error_flag) {
  extern __shared__ int hist[];
  const bool shared = num_groups <= kMaxSharedGroups;
  int* counts = shared ? hist : tile_counts + blockIdx.x * num_groups;
  if (shared)
    for (int g = threadIdx.x; g < num_groups; g += blockDim.x) counts[g] = 0;
  __syncthreads();
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kTileTokens + threadIdx.x;
  if (t < tokens) {
    const int64_t g = ids[t];
    if (g >= 0 && g < num_groups) atomicAdd(&counts[g], 1);
    else atomicCAS(error_flag, 0, static_cast<int>(t + 1));
  }
  __syncthreads();
  if (shared)
    for (int g = threadIdx.x; g < num_groups; g += blockDim.x) tile_counts[blockIdx.x * num_groups + g] = counts[g];
}

// One thread per group: running sum over tiles (tile offsets within the group), then a scan of the
// group totals in one block gives each group's first row.
__global__ void scan_tiles(int* tile_counts, int tiles, int num_groups, int64_t* counts) {
  for (int g = blockIdx.x * blockDim.x + threadIdx.x; g < num_groups; g += gridDim.x * blockDim.x) {
    int running = 0;
    for (int tile = 0; tile < tiles; ++tile) {
      const int c = tile_counts[tile * num_groups + g];
      tile_counts[tile * num_groups + g] = running;  // exclusive: rows of g in earlier tiles
      running += c;
    }
    counts[g] = running;
  }
}

__global__ void group_starts(const int64_t* counts, int num_groups, int64_t* starts) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {  // G is small next to T; one thread keeps it simple
    int64_t offset = 0;
    for (int g = 0; g < num_groups; ++g) {
      starts[g] = offset;
      offset += counts[g];
    }
  }
}

template <typename index_t>
__global__ void tile_rank(const index_t* ids, int64_t tokens, int num_groups, const int* tile_offsets,
                          const int64_t* starts, int64_t* row_map) {
  extern __shared__ int warp_counts[];  // [kWarps][num_groups] when it fits, else unused
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t t = static_cast<int64_t>(blockIdx.x) * kTileTokens + threadIdx.x;
  const bool valid_token = t < tokens;
  const int64_t g64 = valid_token ? static_cast<int64_t>(ids[t]) : -1;
  const bool ok = g64 >= 0 && g64 < num_groups;
  const int g = ok ? static_cast<int>(g64) : -1;
  // lanes of this warp with the same group, and how many of them come before this lane
  const unsigned peers = __match_any_sync(0xffffffffu, g);
  const int rank_in_warp = __popc(peers & ((1u << lane) - 1));
  const bool shared = num_groups <= kMaxSharedGroups;
  if (shared) {
    for (int i = threadIdx.x; i < kWarps * num_groups; i += blockDim.x) warp_counts[i] = 0;
    __syncthreads();
    if (ok && rank_in_warp == 0) warp_counts[warp * num_groups + g] = __popc(peers);
    __syncthreads();
  }
  if (!valid_token) return;
  if (!ok) {
    row_map[t] = -1;
    return;
  }
  int before = rank_in_warp;
  if (shared) {
    for (int w = 0; w < warp; ++w) before += warp_counts[w * num_groups + g];
  } else {  // many groups: count earlier tokens of this tile directly
    const int64_t first = static_cast<int64_t>(blockIdx.x) * kTileTokens;
    for (int64_t s = first; s < first + warp * 32; ++s) before += static_cast<int64_t>(ids[s]) == g;
  }
  row_map[t] = starts[g] + tile_offsets[blockIdx.x * num_groups + g] + before;
}

template <typename scalar_t>
struct Convert {  // float and double
  __device__ static OpMath<scalar_t> up(scalar_t x) { return x; }
  __device__ static scalar_t down(OpMath<scalar_t> x) { return x; }
};
template <>
struct Convert<__nv_bfloat16> {
  __device__ static float up(__nv_bfloat16 x) { return __bfloat162float(x); }
  __device__ static __nv_bfloat16 down(float x) { return __float2bfloat16(x); }
};
template <>
struct Convert<__half> {
  __device__ static float up(__half x) { return __half2float(x); }
  __device__ static __half down(float x) { return __float2half(x); }
};

// One block per row, threads striding over 16-byte vectors (or elements when rows are unaligned).
template <typename scalar_t, bool kVector>
__global__ void move_rows_kernel(const scalar_t* src, int64_t src_row_stride, const int64_t* row_map,
                                 const OpMath<scalar_t>* weights, scalar_t* out, int64_t tokens, int64_t hidden,
                                 bool scatter, int* error_flag) {
  const int64_t t = blockIdx.x;
  const int64_t r = row_map[t];
  if (r < 0 || r >= tokens) {
    atomicCAS(error_flag, 0, static_cast<int>(t + 1));
    return;
  }
  const scalar_t* in = src + (scatter ? t : r) * src_row_stride;
  scalar_t* o = out + (scatter ? r : t) * hidden;
  constexpr int kPer = 16 / sizeof(scalar_t);
  if (weights == nullptr && kVector) {
    const int4* in4 = reinterpret_cast<const int4*>(in);
    int4* o4 = reinterpret_cast<int4*>(o);
    for (int64_t i = threadIdx.x; i < hidden / kPer; i += blockDim.x) o4[i] = in4[i];
  } else if (weights == nullptr) {
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x) o[i] = in[i];
  } else if (kVector) {
    const OpMath<scalar_t> scale = weights[t];
    const int4* in4 = reinterpret_cast<const int4*>(in);
    int4* o4 = reinterpret_cast<int4*>(o);
    for (int64_t i = threadIdx.x; i < hidden / kPer; i += blockDim.x) {
      int4 v = in4[i];
      scalar_t* e = reinterpret_cast<scalar_t*>(&v);
#pragma unroll
      for (int k = 0; k < kPer; ++k) e[k] = Convert<scalar_t>::down(Convert<scalar_t>::up(e[k]) * scale);
      o4[i] = v;
    }
  } else {
    const OpMath<scalar_t> scale = weights[t];
    for (int64_t i = threadIdx.x; i < hidden; i += blockDim.x)
      o[i] = Convert<scalar_t>::down(Convert<scalar_t>::up(in[i]) * scale);
  }
}

int threads_for(int64_t vectors) {
  int threads = 32;
  while (threads < 256 && threads < vectors) threads *= 2;
  return threads;
}

}  // namespace

int64_t group_rank_workspace(int64_t tokens, int64_t num_groups) {
  return tile_count_ints(tokens, num_groups) + 2 * num_groups;
}

template <typename index_t>
void group_rank(const index_t* ids, int64_t tokens, int64_t num_groups, int64_t* counts, int64_t* row_map,
                int* workspace, int* error_flag, cudaStream_t stream) {
  const int tiles = static_cast<int>(ceil_div(tokens, kTileTokens));
  const int groups = static_cast<int>(num_groups);
  if (tiles == 0) {
    cudaMemsetAsync(counts, 0, num_groups * sizeof(int64_t), stream);
    return;
  }
  const size_t hist_bytes = groups <= kMaxSharedGroups ? groups * sizeof(int) : 0;
  if (groups > kMaxSharedGroups) cudaMemsetAsync(workspace, 0, tiles * num_groups * sizeof(int), stream);
  tile_histogram<index_t><<<tiles, kTileTokens, hist_bytes, stream>>>(ids, tokens, groups, workspace, error_flag);
  scan_tiles<<<static_cast<int>(ceil_div(groups, 128)), 128, 0, stream>>>(workspace, tiles, groups, counts);
  int64_t* starts = reinterpret_cast<int64_t*>(workspace + tile_count_ints(tokens, num_groups));
  group_starts<<<1, 1, 0, stream>>>(counts, groups, starts);
  const size_t warp_bytes = groups <= kMaxSharedGroups ? kWarps * groups * sizeof(int) : 0;
  tile_rank<index_t><<<tiles, kTileTokens, warp_bytes, stream>>>(ids, tokens, groups, workspace, starts, row_map);
}

template <typename scalar_t>
void move_rows(const scalar_t* src, int64_t src_row_stride, const int64_t* row_map,
               const OpMath<scalar_t>* weights, scalar_t* out, int64_t tokens, int64_t hidden, bool scatter, int* error_flag, cudaStream_t stream) {
  if (tokens == 0 || hidden == 0) return;
  constexpr int kPer = 16 / sizeof(scalar_t);
  const bool vector = hidden % kPer == 0 && src_row_stride % kPer == 0 &&
                      reinterpret_cast<uintptr_t>(src) % 16 == 0 && reinterpret_cast<uintptr_t>(out) % 16 == 0;
  const int threads = threads_for(vector ? hidden / kPer : hidden);
  if (vector)
    move_rows_kernel<scalar_t, true><<<tokens, threads, 0, stream>>>(src, src_row_stride, row_map, weights, out,
                                                                     tokens, hidden, scatter, error_flag);
  else
    move_rows_kernel<scalar_t, false><<<tokens, threads, 0, stream>>>(src, src_row_stride, row_map, weights, out,
                                                                      tokens, hidden, scatter, error_flag);
}

template void group_rank<int32_t>(const int32_t*, int64_t, int64_t, int64_t*, int64_t*, int*, int*, cudaStream_t);
template void group_rank<int64_t>(const int64_t*, int64_t, int64_t, int64_t*, int64_t*, int*, int*, cudaStream_t);
#define GTS_MOVE_ROWS(T)                                                                                   \
  template void move_rows<T>(const T*, int64_t, const int64_t*, const OpMath<T>*, T*, int64_t, int64_t, bool, \
                             int*, cudaStream_t);
GTS_MOVE_ROWS(float)
GTS_MOVE_ROWS(double)
GTS_MOVE_ROWS(__half)
GTS_MOVE_ROWS(__nv_bfloat16)

}  // namespace gts::cuda
