#include "isa.h"

#include <c10/util/Exception.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include <unistd.h>

namespace cnnkernels {
namespace cpu {
namespace {

// 0: generic, 1: avx2, 2: avx512
int initial_choice() {
  const int best = avx512_available() ? 2 : avx2_available() ? 1 : 0;
  const char* env = std::getenv("CNNKERNELS_CPU_ISA");
  if (env != nullptr && std::strcmp(env, "generic") == 0) return 0;
  if (env != nullptr && std::strcmp(env, "avx2") == 0) return best < 1 ? best : 1;
  return best;
}

std::atomic<int64_t>& llc_override() {
  static std::atomic<int64_t> v(-1);
  return v;
}

std::atomic<int>& isa_level() {
  static std::atomic<int> level(initial_choice());
  return level;
}

// 0: off, 1: where the size rules pick it, 2: wherever it can run
std::atomic<int>& winograd_mode() {
  static std::atomic<int> mode([] {
    const char* env = std::getenv("CNNKERNELS_WINOGRAD");
    return env != nullptr && std::strcmp(env, "0") == 0 ? 0 : 1;
  }());
  return mode;
}

std::atomic<int>& wide_blocks() {
  static std::atomic<int> v([] {
    const char* env = std::getenv("CNNKERNELS_WIDE_TILES");
    const int n = env != nullptr ? std::atoi(env) : 4;
    return n < 1 ? 1 : n > 4 ? 4 : n;
  }());
  return v;
}

std::atomic<bool>& wgrad_oc_mode() {
  static std::atomic<bool> v([] {
    const char* env = std::getenv("CNNKERNELS_WGRAD_OC");
    return env == nullptr || std::string(env) != "0";
  }());
  return v;
}

}  // namespace

int wide_tile_blocks() { return wide_blocks().load(std::memory_order_relaxed); }
void set_wide_tile_blocks(int n) {
  TORCH_CHECK(n >= 1 && n <= 4, "cnnkernels: wide tile blocks must be in [1, 4], got ", n);
  wide_blocks() = n;
}

bool use_wgrad_oc() { return wgrad_oc_mode().load(std::memory_order_relaxed); }
void set_wgrad_oc(bool on) { wgrad_oc_mode() = on; }

bool use_winograd() { return winograd_mode().load(std::memory_order_relaxed) >= 1; }
bool force_winograd() { return winograd_mode().load(std::memory_order_relaxed) == 2; }
void set_winograd(bool on) { winograd_mode() = on ? 1 : 0; }
void force_winograd_for_tests() { winograd_mode() = 2; }

bool avx2_available() {
#if defined(__x86_64__) || defined(__i386__)
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
  return false;
#endif
}

bool avx512_available() {
#if defined(__x86_64__) || defined(__i386__)
  return avx2_available() && __builtin_cpu_supports("avx512f");
#else
  return false;
#endif
}

bool use_avx2() { return isa_level().load(std::memory_order_relaxed) >= 1; }
bool use_avx512() { return isa_level().load(std::memory_order_relaxed) == 2; }

void set_isa(const std::string& name) {
  if (name == "generic") {
    isa_level() = 0;
  } else if (name == "avx2") {
    TORCH_CHECK(avx2_available(),
                "cnnkernels: cannot select the avx2 code path: this processor lacks AVX2/FMA");
    isa_level() = 1;
  } else if (name == "avx512") {
    TORCH_CHECK(avx512_available(),
                "cnnkernels: cannot select the avx512 code path: this processor lacks AVX-512F");
    isa_level() = 2;
  } else {
    TORCH_CHECK(false, "cnnkernels: unknown CPU code path '", name,
                "' (expected 'generic', 'avx2' or 'avx512')");
  }
}

std::string isa_name() {
  const int l = isa_level().load(std::memory_order_relaxed);
  return l == 2 ? "avx512" : l == 1 ? "avx2" : "generic";
}

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

bool stream_stores(int64_t bytes) { return bytes > kStreamBytes && bytes > llc_bytes() / 4; }

void set_llc_bytes(int64_t bytes) { llc_override() = bytes < 0 ? -1 : bytes; }

}  // namespace cpu
}  // namespace cnnkernels
