// Large CPU outputs, reused. torch has no caching allocator on CPU: every large output is a fresh
// mmap whose pages the kernel zeroes on first touch, and that costs more than the row copies that
// fill it (measured: a gather into a fresh buffer runs at a third of one into an existing buffer).
// Like the CUDA caching allocator, the pool keeps recently freed large blocks and hands them out
// again. A block is free when nothing but the pool holds its storage, so a tensor the caller (or
// autograd) still holds is never reused.
#include <c10/core/Storage.h>

#include <sys/mman.h>

#include <atomic>
#include <cstdlib>
#include <deque>
#include <mutex>

#include "group_dispatch.h"

namespace gts {
namespace {

constexpr int64_t kMiB = 1 << 20;
constexpr int64_t kPooledMin = 2 * kMiB;  // smaller outputs come from malloc's own free lists

int64_t default_limit() {
  const char* value = std::getenv("GTS_CPU_OUTPUT_POOL_MB");
  return (value != nullptr ? std::atoll(value) : 4096) * kMiB;
}

std::atomic<int64_t> limit_bytes{default_limit()};
std::mutex pool_mutex;
std::deque<c10::Storage> blocks;  // least recently handed out first

// huge pages where the kernel allows it: fewer first-touch faults on a fresh block
void advise_huge_pages(void* data, int64_t nbytes) {
  constexpr uintptr_t kHuge = 2 * kMiB;
  const auto start = reinterpret_cast<uintptr_t>(data);
  const uintptr_t end = start + nbytes, first = (start + kHuge - 1) & ~(kHuge - 1);
  if (end > first + kHuge) madvise(reinterpret_cast<void*>(first), (end - first) & ~(kHuge - 1), MADV_HUGEPAGE);
}

at::Tensor view_rows(const c10::Storage& storage, int64_t n, int64_t h, const at::TensorOptions& options) {
  return at::empty({0}, options).set_(storage, 0, {n, h}, {h, 1});
}

}  // namespace

at::Tensor empty_rows(int64_t n, int64_t h, const at::TensorOptions& options) {
  const int64_t nbytes = n * h * static_cast<int64_t>(c10::elementSize(c10::typeMetaToScalarType(options.dtype())));
  const int64_t limit = limit_bytes.load();
  if (nbytes < kPooledMin || nbytes > limit) {
    at::Tensor out = at::empty({n, h}, options);
    if (nbytes >= kPooledMin) advise_huge_pages(out.data_ptr(), nbytes);
    return out;
  }
  std::lock_guard<std::mutex> lock(pool_mutex);
  for (auto it = blocks.begin(); it != blocks.end(); ++it) {
    // a free block of this size (or up to a quarter larger), most often last step's same output
    if (it->use_count() == 1 && it->nbytes() >= static_cast<size_t>(nbytes) &&
        it->nbytes() <= static_cast<size_t>(nbytes + nbytes / 4)) {
      c10::Storage storage = *it;
      blocks.erase(it);
      blocks.push_back(storage);
      return view_rows(storage, n, h, options);
    }
  }
  at::Tensor out = at::empty({n, h}, options);
  advise_huge_pages(out.data_ptr(), nbytes);
  blocks.push_back(out.storage());
  int64_t held = 0;
  for (const auto& block : blocks) held += static_cast<int64_t>(block.nbytes());
  while (held > limit && !blocks.empty()) {  // forget the oldest; one in use is freed by its holder
    held -= static_cast<int64_t>(blocks.front().nbytes());
    blocks.pop_front();
  }
  return out;
}

int64_t cpu_output_pool_limit(int64_t megabytes) {
  // held blocks stay until later outputs push them out, so turning the pool off and on (as the
  // benchmark does between methods) keeps them
  return (megabytes >= 0 ? limit_bytes.exchange(megabytes * kMiB) : limit_bytes.load()) / kMiB;
}

}  // namespace gts
