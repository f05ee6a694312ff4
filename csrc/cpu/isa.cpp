#include "isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include <unistd.h>

namespace cnnkernels {
namespace cpu {
namespace {

bool initial_choice() {
  const char* env = std::getenv("CNNKERNELS_CPU_ISA");
  if (env != nullptr && std::strcmp(env, "generic") == 0) return false;
  return avx2_available();
}

std::atomic<int64_t>& llc_override() {
  static std::atomic<int64_t> v(-1);
  return v;
}

std::atomic<bool>& avx2_flag() {
  static std::atomic<bool> flag(initial_choice());
  return flag;
}

}  // namespace

bool avx2_available() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool use_avx2() { return avx2_flag().load(std::memory_order_relaxed); }

void set_isa(const std::string& name) {
  if (name == "generic") {
    avx2_flag() = false;
  } else if (name == "avx2") {
    TORCH_CHECK(avx2_available(),
                "cnnkernels: cannot select the avx2 code path: this processor lacks AVX2/FMA");
    avx2_flag() = true;
  } else {
    TORCH_CHECK(false, "cnnkernels: unknown CPU code path '", name,
                "' (expected 'generic' or 'avx2')");
  }
}

std::string isa_name() { return use_avx2() ? "avx2" : "generic"; }

int64_t llc_bytes() {
  const int64_t o = llc_override().load(std::memory_order_relaxed);
  if (o >= 0) return o;
  static const int64_t detected = [] {
#ifdef _SC_LEVEL3_CACHE_SIZE  // glibc
    const long v = sysconf(_SC_LEVEL3_CACHE_SIZE);
    return v > 0 ? int64_t(v) : int64_t(0);
#else
    return int64_t(0);
#endif
  }();
  return detected;
}

void set_llc_bytes(int64_t bytes) { llc_override() = bytes < 0 ? -1 : bytes; }

}  // namespace cpu
}  // namespace cnnkernels
