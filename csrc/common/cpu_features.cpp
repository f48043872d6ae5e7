// Run-time CPU feature detection. The build never uses -march=native, so whichever ISA path a
// kernel takes is decided here, once, from what the running CPU reports.
#include <cstring>
#include <stdexcept>

#include "common/bayesq_common.h"

namespace bayesq {

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512vpopcntdq = __builtin_cpu_supports("avx512vpopcntdq");
    f.avx512bw = __builtin_cpu_supports("avx512bw");
    f.avx512vl = __builtin_cpu_supports("avx512vl");
    f.avx512vnni = __builtin_cpu_supports("avx512vnni");
    f.avxvnni = __builtin_cpu_supports("avxvnni");
#endif
    return f;
  }();
  return features;
}

Isa resolve_isa(const char* name) {
  const CpuFeatures& f = cpu_features();
  if (name == nullptr) return f.avx512f ? Isa::kAvx512 : f.avx2 ? Isa::kAvx2 : Isa::kPortable;
  if (std::strcmp(name, "portable") == 0) return Isa::kPortable;
  if (std::strcmp(name, "avx2") == 0) {
    if (!f.avx2) throw std::invalid_argument("this CPU has no AVX2");
    return Isa::kAvx2;
  }
  if (std::strcmp(name, "avx512") == 0) {
    if (!f.avx512f) throw std::invalid_argument("this CPU has no AVX-512F");
    return Isa::kAvx512;
  }
  throw std::invalid_argument("isa must be 'portable', 'avx2' or 'avx512'");
}

std::int64_t popcount_words(const word_t* words, std::size_t n) {
  std::int64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) total += __builtin_popcountll(words[i]);
  return total;
}

}  // namespace bayesq
