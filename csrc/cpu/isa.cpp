#include "isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace cnnkernels {
namespace cpu {
namespace {

bool initial_choice() {
  const char* env = std::getenv("CNNKERNELS_CPU_ISA");
  if (env != nullptr && std::strcmp(env, "generic") == 0) return false;
  return avx2_available();
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

}  // namespace cpu
}  // namespace cnnkernels
