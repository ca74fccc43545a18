// Argument checks for the group dispatch ops. Python sees TypeError, ValueError or IndexError
// with a message that names the argument and what would be valid.
#include "group_dispatch.h"

namespace gts {
namespace {

bool supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf || t == at::kDouble;
}

void check_rows_tensor(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.dim() == 2, "gts::", op, ": ", name, " must be 2-D [tokens, hidden], got shape ",
                    t.sizes());
  TORCH_CHECK_TYPE(supported_float(t.scalar_type()), "gts::", op, ": ", name, " has dtype ",
                   t.scalar_type(), "; supported: float32, bfloat16, float16, float64");
}

void check_index_tensor(const char* op, const char* name, const at::Tensor& ids, const at::Tensor& rows,
                        const char* rows_name) {
  TORCH_CHECK_TYPE(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, "gts::", op, ": ",
                   name, " must be int64 or int32, got ", ids.scalar_type());
  TORCH_CHECK_VALUE(ids.dim() == 1 && ids.size(0) == rows.size(0), "gts::", op, ": ", name,
                    " must be 1-D with one entry per row of ", rows_name, " (", rows.size(0),
                    " rows), got shape ", ids.sizes());
  TORCH_CHECK_VALUE(ids.device() == rows.device(), "gts::", op, ": ", name, " is on ", ids.device(),
                    " but ", rows_name, " is on ", rows.device(), "; both must be on the same device");
}

}  // namespace

void check_permute_args(const at::Tensor& hidden, const at::Tensor& group_ids, int64_t num_groups) {
  check_rows_tensor("group_permute", "hidden", hidden);
  check_index_tensor("group_permute", "group_ids", group_ids, hidden, "hidden");
  TORCH_CHECK_VALUE(num_groups >= 1, "gts::group_permute: num_groups must be >= 1, got ", num_groups);
}

void check_rows_args(const char* op, const at::Tensor& rows, const at::Tensor& row_map,
                     const std::optional<at::Tensor>& weights) {
  check_rows_tensor(op, "the rows", rows);
  check_index_tensor(op, "row_map", row_map, rows, "the rows");
  if (weights.has_value()) {
    const at::Tensor& w = *weights;
    TORCH_CHECK_TYPE(supported_float(w.scalar_type()), "gts::", op, ": weights has dtype ", w.scalar_type(),
                     "; supported: float32, bfloat16, float16, float64");
    TORCH_CHECK_VALUE(w.dim() == 1 && w.size(0) == rows.size(0), "gts::", op,
                      ": weights must be 1-D with one weight per token (", rows.size(0), "), got shape ",
                      w.sizes());
    TORCH_CHECK_VALUE(w.device() == rows.device(), "gts::", op, ": weights is on ", w.device(),
                      " but the rows are on ", rows.device(), "; both must be on the same device");
  }
}

at::Tensor rows_view(const at::Tensor& rows) { return rows.stride(1) == 1 ? rows : rows.contiguous(); }

}  // namespace gts
