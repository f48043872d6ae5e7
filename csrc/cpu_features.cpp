// Run-time CPU feature detection. The build never uses -march=native, so whichever ISA path a
// kernel takes is decided here, once, from what the running CPU reports.
#include "bayesq_common.h"

namespace bayesq {

const CpuFeatures& cpu_features() {
  static const CpuFeatures features = [] {
    CpuFeatures f;
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    f.avx2 = __builtin_cpu_supports("avx2");
    f.avx512f = __builtin_cpu_supports("avx512f");
    f.avx512vpopcntdq = __builtin_cpu_supports("avx512vpopcntdq");
#endif
    return f;
  }();
  return features;
}

std::int64_t popcount_words(const word_t* words, std::size_t n) {
  std::int64_t total = 0;
  for (std::size_t i = 0; i < n; ++i) total += __builtin_popcountll(words[i]);
  return total;
}

}  // namespace bayesq
