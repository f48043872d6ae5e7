// The portable reference kernel: plain loops over outputs, plane pairs and words, straight from
// the formula in bitserial_gemm.h. The fallback on CPUs without AVX2, and what the tiled paths
// are held to in the tests.
#include "bitserial/bitserial_gemm.h"

namespace bayesq {

void bitserial_rect_portable(const GemmProblem& p, std::int64_t n0, std::int64_t n1,
                             std::int64_t m0, std::int64_t m1) {
  const std::int64_t words = p.a.words;
  for (std::int64_t n = n0; n < n1; ++n) {
    for (std::int64_t m = m0; m < m1; ++m) {
      std::uint32_t acc = p.init(n, m);
      for (std::int64_t pa = p.a.plane_offsets[n]; pa < p.a.plane_offsets[n + 1]; ++pa) {
        const word_t* a = p.a.plane(pa);
        for (std::int64_t pw = p.w.plane_offsets[m]; pw < p.w.plane_offsets[m + 1]; ++pw) {
          const word_t* w = p.w.plane(pw);
          std::uint32_t count = 0;  // at most k
          for (std::int64_t t = 0; t < words; ++t)
            count += static_cast<std::uint32_t>(
                __builtin_popcountll(p.use_xor ? (a[t] ^ w[t]) : (a[t] & w[t])));
          acc += static_cast<std::uint32_t>(p.a_coef[pa] * p.w_coef[pw]) * count;
        }
      }
      p.store_row(n, m, m + 1, &acc);
    }
  }
}

}  // namespace bayesq
