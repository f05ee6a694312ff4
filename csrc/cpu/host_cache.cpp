// The output-memory cache of the CPU kernels (see host_cache.h).
#include "host_cache.h"

#include <ATen/EmptyTensor.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>
#include <pthread.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
#include <vector>

namespace cnnkernels {
namespace cpu {
namespace {

constexpr size_t kHuge = size_t(2) << 20;  // transparent huge page size

struct Block {
  void* p;
  size_t size;
};

size_t round_up(size_t n, size_t a) { return (n + a - 1) / a * a; }

// Block size for a request of n bytes: whole 2 MB pages from 4 MB on
// (where a huge page's rounding wastes at most a third), 64 KB steps below.
size_t block_size(size_t n) { return n >= 2 * kHuge ? round_up(n, kHuge) : round_up(n, 64 << 10); }

// A cached block may serve a request if it wastes at most an eighth of it
// (plus one rounding step of its size).
bool fits(size_t block, size_t want) {
  return block <= want + want / 8 + (want >= 2 * kHuge ? kHuge : size_t(64) << 10);
}

int64_t default_cap() {
  if (const char* e = std::getenv("CNNKERNELS_CPU_CACHE_MB")) {
    const long long mb = std::strtoll(e, nullptr, 10);  // negative: off; huge: clamped
    return mb <= 0 ? 0 : int64_t(std::min<long long>(mb, (int64_t(1) << 40))) << 20;
  }
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  const int64_t phys = pages > 0 && page > 0 ? int64_t(pages) * page : 0;
  const int64_t cap = int64_t(2) << 30;
  return phys > 0 ? std::min(cap, phys / 8) : cap;
}

// A fresh mapping of size bytes, or nullptr.
void* map_block(size_t size) {
  // 2 MB-aligned where huge pages may back it: map a huge page more and trim.
  const bool huge = size >= kHuge;
  const size_t span = huge ? size + kHuge : size;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  if (!huge) return raw;
  const uintptr_t b = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t a = round_up(b, kHuge);
  if (a > b) munmap(raw, a - b);
  if (a + size < b + span) munmap(reinterpret_cast<void*>(a + size), b + span - (a + size));
#ifdef MADV_HUGEPAGE
  madvise(reinterpret_cast<void*>(a), size, MADV_HUGEPAGE);
#endif
  return reinterpret_cast<void*>(a);
}

class HostCache final : public c10::Allocator {
 public:
  c10::DataPtr allocate(size_t n) override {
    if (int64_t(n) < kHostCacheMinBytes || cap_ <= 0) return c10::GetDefaultCPUAllocator()->allocate(n);
    const size_t want = block_size(n);
    Block* b = nullptr;
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = free_.lower_bound(want);
      if (it != free_.end() && fits(it->first, want)) {
        b = it->second;
        free_.erase(it);
        free_bytes_ -= int64_t(b->size);
      }
      if (b != nullptr) used_bytes_ += int64_t(b->size);
    }
    if (b == nullptr) {
      void* p = map_block(want);
      if (p == nullptr) {  // give the cached blocks back and try once more
        release_all();
        p = map_block(want);
      }
      TORCH_CHECK(p != nullptr, "cnnkernels: out of memory: could not map ", want,
                  " bytes for an output tensor");
      b = new Block{p, want};
      std::lock_guard<std::mutex> lock(mu_);
      used_bytes_ += int64_t(b->size);
    }
    return {b->p, b, &HostCache::release_block, c10::Device(c10::DeviceType::CPU)};
  }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

  void release_all() {
    std::multimap<size_t, Block*> drop;
    {
      std::lock_guard<std::mutex> lock(mu_);
      drop.swap(free_);
      free_bytes_ = 0;
    }
    for (auto& kv : drop) unmap(kv.second);
  }

  std::vector<int64_t> stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {free_bytes_, used_bytes_, cap_};
  }

  static HostCache& get() {
    static HostCache* c = new HostCache();  // never destroyed: tensors may outlive statics
    return *c;
  }

 private:
  // fork() while another thread holds mu_ would leave it locked in the
  // child (a DataLoader worker, say): hold it across the fork instead.
  HostCache() : cap_(default_cap()) {
    pthread_atfork([] { get().mu_.lock(); }, [] { get().mu_.unlock(); },
                   [] { get().mu_.unlock(); });
  }

  static void unmap(Block* b) {
    munmap(b->p, b->size);
    delete b;
  }

  // Deleter of every cached block's DataPtr: back to the free list, or to
  // the system where the free list would pass the cap (its largest blocks
  // first, which are the least likely to be asked for again).
  static void release_block(void* ctx) {
    HostCache& c = get();
    Block* b = static_cast<Block*>(ctx);
    std::vector<Block*> drop;
    {
      std::lock_guard<std::mutex> lock(c.mu_);
      c.used_bytes_ -= int64_t(b->size);
      if (int64_t(b->size) > c.cap_) {
        drop.push_back(b);
      } else {
        // first among the blocks of its size: the next request takes the
        // block freed last (LIFO), whose lines may still be in the caches.
        // Oldest-first cycled through every cached block of a size: a
        // 12.8 MB eval BatchNorm2d whose output had fit in the L3 with its
        // input ran 0.57 ms in the suite (after cases that left several
        // such blocks) against 0.21 alone.
        c.free_.emplace_hint(c.free_.lower_bound(b->size), b->size, b);
        c.free_bytes_ += int64_t(b->size);
        while (c.free_bytes_ > c.cap_) {
          auto last = std::prev(c.free_.end());
          c.free_bytes_ -= int64_t(last->first);
          drop.push_back(last->second);
          c.free_.erase(last);
        }
      }
    }
    for (Block* d : drop) unmap(d);
  }

  std::mutex mu_;
  std::multimap<size_t, Block*> free_;
  int64_t free_bytes_ = 0, used_bytes_ = 0;
  const int64_t cap_;
};

}  // namespace

at::Tensor empty_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  TORCH_INTERNAL_ASSERT(options.device().is_cpu());
  return at::Tensor(at::detail::empty_generic(sizes, &HostCache::get(),
                                              c10::DispatchKeySet(c10::DispatchKey::CPU),
                                              c10::typeMetaToScalarType(options.dtype()),
                                              options.memory_format_opt()));
}

void host_cache_release() { HostCache::get().release_all(); }

std::vector<int64_t> host_cache_stats() { return HostCache::get().stats(); }

}  // namespace cpu
}  // namespace cnnkernels
