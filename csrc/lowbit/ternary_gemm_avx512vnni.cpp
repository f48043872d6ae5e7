// The ternary x u8 GEMM on AVX-512 VNNI (64-byte vectors, vpdpbusd on zmm). Compiled with
// -mavx512f -mavx512bw -mavx512vl -mavx512vnni; called only after resolve_ternary_isa found
// them all.
#include <immintrin.h>

#include <cstdint>

#include "lowbit/ternary_gemm.h"

namespace {

struct V {
  using reg = __m512i;
  static constexpr int kBytes = 64;
  static inline reg load(const std::uint8_t* p) { return _mm512_loadu_si512(p); }
  static inline reg zero() { return _mm512_setzero_si512(); }
  static inline reg expand(reg v, int q) {
    const reg mask = _mm512_set1_epi8(3);
    return _mm512_and_si512(q == 0 ? v : _mm512_srli_epi16(v, static_cast<unsigned>(2 * q)), mask);
  }
  static inline reg dot(reg acc, reg u, reg s) { return _mm512_dpbusd_epi32(acc, u, s); }
  static inline std::uint32_t reduce(reg v) {
    return static_cast<std::uint32_t>(_mm512_reduce_add_epi32(v));
  }
};

#include "lowbit/ternary_gemm_body.h"

}  // namespace

namespace bayesq {

void ternary_rect_avx512vnni(const TernaryProblem& p, std::int64_t m0, std::int64_t m1,
                             std::int64_t n0, std::int64_t n1) {
  // 4 x 4 accumulators + 4 activation vectors + the expanded weights and the mask: 26 of the
  // 32 zmm registers. One activation row: 8 weight rows.
  ternary_rect_body<4, 4, 8>(p, m0, m1, n0, n1);
}

}  // namespace bayesq
