// The ternary x u8 GEMM on AVX-VNNI (32-byte vectors, the VEX vpdpbusd on ymm: Alder Lake and
// later client cores, also present beside AVX-512 VNNI on Sapphire Rapids). Compiled with -mavx2
// -mavxvnni; called only after resolve_ternary_isa found both.
#include <immintrin.h>

#include <cstdint>

#include "lowbit/ternary_gemm.h"

namespace {

struct V {
  using reg = __m256i;
  static constexpr int kBytes = 32;
  static inline reg load(const std::uint8_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static inline reg zero() { return _mm256_setzero_si256(); }
  static inline reg expand(reg v, int q) {
    const reg mask = _mm256_set1_epi8(3);
    return _mm256_and_si256(q == 0 ? v : _mm256_srli_epi16(v, 2 * q), mask);
  }
  static inline reg dot(reg acc, reg u, reg s) { return _mm256_dpbusd_avx_epi32(acc, u, s); }
  static inline std::uint32_t reduce(reg v) {
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    return static_cast<std::uint32_t>(_mm_cvtsi128_si32(s));
  }
};

#include "lowbit/ternary_gemm_body.h"

}  // namespace

namespace bayesq {

void ternary_rect_avxvnni(const TernaryProblem& p, std::int64_t m0, std::int64_t m1,
                          std::int64_t n0, std::int64_t n1) {
  // 16 ymm registers: 2 x 4 accumulators + 2 activation vectors + expanded weights and mask.
  ternary_rect_body<2, 4, 4>(p, m0, m1, n0, n1);
}

}  // namespace bayesq
