// The gts:: op library: schemas (so torch.compile and the Python layer see typed ops), the CPU
// implementations, and the Python module that loads them. Autograd and the fake (meta) kernels
// are registered from Python (gts_megatron/ops), next to the fallback they must agree with.
#include <Python.h>
#include <torch/library.h>

#include "group_dispatch.h"

TORCH_LIBRARY(gts, m) {
  m.def("group_permute(Tensor hidden, Tensor group_ids, int num_groups) -> (Tensor, Tensor, Tensor)");
  m.def("group_unpermute(Tensor permuted, Tensor row_map, Tensor? weights=None) -> Tensor");
  m.def("scatter_rows(Tensor rows, Tensor row_map, Tensor? weights=None) -> Tensor");
  m.def("cpu_output_pool_limit(int megabytes) -> int", &gts::cpu_output_pool_limit);
}

TORCH_LIBRARY_IMPL(gts, CPU, m) {
  m.impl("group_permute", &gts::group_permute_cpu);
  m.impl("group_unpermute", &gts::group_unpermute_cpu);
  m.impl("scatter_rows", &gts::scatter_rows_cpu);
}

// Importing gts_megatron._C runs the registrations above; the module itself is empty.
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&module); }
