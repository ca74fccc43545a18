// Group-routed token dispatch: declarations shared by the op registration, the CPU kernels and
// the CUDA bindings.
//
// A "row map" is the permutation the dispatch applies: row_map[t] is the row of token t in the
// permuted tensor. Permuted rows are ordered by group, and stable (token order) within a group.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace gts {

// Argument checks shared by every backend: each failure names the argument and what is valid.
void check_permute_args(const at::Tensor& hidden, const at::Tensor& group_ids, int64_t num_groups);
void check_rows_args(const char* op, const at::Tensor& rows, const at::Tensor& row_map,
                     const std::optional<at::Tensor>& weights);

// The rows as the kernels read them: any row stride, unit stride along the hidden dimension.
at::Tensor rows_view(const at::Tensor& rows);

// An uninitialised contiguous [n, h] CPU output; large ones come from a pool of freed outputs
// (cpu_pool.cpp), since the page zeroing of fresh allocations costs more than the copy.
at::Tensor empty_rows(int64_t n, int64_t h, const at::TensorOptions& options);
// Sets the pool's limit in megabytes (0: no pooling; the default 4096 or $GTS_CPU_OUTPUT_POOL_MB)
// unless megabytes < 0; returns the previous limit.
int64_t cpu_output_pool_limit(int64_t megabytes);

// (permuted [T,H], tokens_per_group [G] int64, row_map [T] int64)
std::tuple<at::Tensor, at::Tensor, at::Tensor> group_permute_cpu(
    const at::Tensor& hidden, const at::Tensor& group_ids, int64_t num_groups);
// out[t] = permuted[row_map[t]] * weights[t]
at::Tensor group_unpermute_cpu(const at::Tensor& permuted, const at::Tensor& row_map,
                               const std::optional<at::Tensor>& weights);
// out[row_map[t]] = rows[t] * weights[t] (the inverse of unpermute; its backward)
at::Tensor scatter_rows_cpu(const at::Tensor& rows, const at::Tensor& row_map,
                            const std::optional<at::Tensor>& weights);

}  // namespace gts
