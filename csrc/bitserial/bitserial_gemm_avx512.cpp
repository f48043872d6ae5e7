// Bit-serial GEMM, AVX-512 variant: compiled with -mavx512f -mavx512vl -mavx512vpopcntdq (CMakeLists.txt),
// called only when resolve_bitserial_isa picked avx512. VPOPCNTQ counts each 64-bit lane; the
// RA x RW tile keeps one 512-bit accumulator per plane pair (8 partial counts each) and reduces
// them once per tile and k block, eight at a time (reduce8).
#include <immintrin.h>

#include "bitserial/bitserial_gemm_tiled.h"

namespace bayesq {

namespace {

// Lane l of the result is the sum of the 8 lanes of v[l]. Forced inline, so that the
// accumulators stay in registers (a call would put the whole array on the stack).
BAYESQ_ALWAYS_INLINE __m512i reduce8(const __m512i* v) {
  __m512i s1[4], s2[2];
  for (int q = 0; q < 4; ++q)  // 128-bit lane L: (partial of v[2q], partial of v[2q + 1])
    s1[q] = _mm512_add_epi64(_mm512_unpacklo_epi64(v[2 * q], v[2 * q + 1]),
                             _mm512_unpackhi_epi64(v[2 * q], v[2 * q + 1]));
  for (int q = 0; q < 2; ++q)  // lanes: pair (4q, 4q+1) twice, then pair (4q+2, 4q+3) twice
    s2[q] = _mm512_add_epi64(_mm512_shuffle_i64x2(s1[2 * q], s1[2 * q + 1], 0x88),
                             _mm512_shuffle_i64x2(s1[2 * q], s1[2 * q + 1], 0xdd));
  return _mm512_add_epi64(_mm512_shuffle_i64x2(s2[0], s2[1], 0x88),
                          _mm512_shuffle_i64x2(s2[0], s2[1], 0xdd));
}

struct Avx512Kernel {
  // RW of 8 or 4 lets a reduced vector of 8 counts go out as one row of 8 or two rows of 4.
  template <int RA>
  static constexpr int rw() {
    return RA <= 2 ? 8 : 4;
  }

  template <int RA, int RW, bool kXor>
  static void tile(const word_t* a, const word_t* w, std::int64_t stride, std::int64_t k0,
                   std::int64_t k1, std::uint32_t* counts, std::int64_t ld, bool add) {
    static_assert(RW == 8 || RW == 4, "the stores below assume rows of 8 or 4 counts");
    constexpr int kPairs = RA * RW;
    constexpr int kPadded = (kPairs + 7) / 8 * 8;
    __m512i acc[kPadded];
    for (int q = 0; q < kPadded; ++q) acc[q] = _mm512_setzero_si512();
    std::int64_t k = k0;
    do {  // k1 > k0: at least one step (a loop that might not run makes GCC keep acc in memory)
      __m512i va[RA];
      for (int i = 0; i < RA; ++i) va[i] = _mm512_loadu_si512(a + i * stride + k);
      for (int j = 0; j < RW; ++j) {
        const __m512i vw = _mm512_loadu_si512(w + j * stride + k);
        for (int i = 0; i < RA; ++i) {
          const __m512i x = kXor ? _mm512_xor_si512(va[i], vw) : _mm512_and_si512(va[i], vw);
          acc[i * RW + j] = _mm512_add_epi64(acc[i * RW + j], _mm512_popcnt_epi64(x));
        }
      }
      k += 8;
    } while (k < k1);
    // Counts are at most k < 2^32 per k block, so narrowing to 32 bits is exact.
    for (int q = 0; q < kPadded; q += 8) {
      const __m256i sums = _mm512_cvtepi64_epi32(reduce8(acc + q));
      const int i = q / RW;  // the tile row of lane 0
      if (RW == 8) {
        auto* dst = reinterpret_cast<__m256i*>(counts + i * ld);
        _mm256_storeu_si256(dst, add ? _mm256_add_epi32(_mm256_loadu_si256(dst), sums) : sums);
      } else {
        for (int h = 0; h < 2 && i + h < RA; ++h) {
          const __m128i part = h ? _mm256_extracti128_si256(sums, 1) : _mm256_castsi256_si128(sums);
          auto* dst = reinterpret_cast<__m128i*>(counts + (i + h) * ld);
          _mm_storeu_si128(dst, add ? _mm_add_epi32(_mm_loadu_si128(dst), part) : part);
        }
      }
    }
  }
};

}  // namespace

void bitserial_rect_avx512(const GemmProblem& p, std::int64_t n0, std::int64_t n1,
                           std::int64_t m0, std::int64_t m1) {
  tiled::rect<Avx512Kernel>(p, n0, n1, m0, m1);
}

}  // namespace bayesq
