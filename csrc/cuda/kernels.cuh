// Launchers of the CUDA group-dispatch kernels, on raw pointers so this file and kernels.cu
// compile with nvcc alone (no torch headers); bindings.cpp adapts them to tensors.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <type_traits>

namespace gts::cuda {

constexpr int kTileTokens = 256;  // tokens ranked per block; one thread each

// Arithmetic type of row scaling: fp64 rows are scaled in fp64 (gradcheck), the others in fp32.
template <typename scalar_t>
using OpMath = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

// Scratch ints group_rank needs: per-tile counts, then each group's first row (int64).
int64_t group_rank_workspace(int64_t tokens, int64_t num_groups);

// Stable counting sort: counts[G] (int64) and row_map[T] (int64). Ids outside [0, G) are not
// counted and their rows map to -1; *error_flag (device int) is set to 1 + the first bad token.
template <typename index_t>
void group_rank(const index_t* ids, int64_t tokens, int64_t num_groups, int64_t* counts, int64_t* row_map,
                int* workspace, int* error_flag, cudaStream_t stream);

// Row moves, 16-byte vectors where rows are aligned: out[dst(t)] = src[src(t)] * w[t] with
// (dst, src) = (row_map[t], t) when scatter, else (t, row_map[t]). Entries of row_map outside
// [0, tokens) are skipped and set *error_flag. weights may be null.
template <typename scalar_t>
void move_rows(const scalar_t* src, int64_t src_row_stride, const int64_t* row_map, const OpMath<scalar_t>* weights,
               scalar_t* out, int64_t tokens, int64_t hidden, bool scatter, int* error_flag, cudaStream_t stream);

}  // namespace gts::cuda
