// Bit-serial GEMM, AVX2 variant: compiled with -mavx2 (CMakeLists.txt), called only when the CPU
// has AVX2. AVX2 has no vector popcount: each byte is counted by two VPSHUFB nibble lookups, the
// byte counts of a plane pair are summed in 8-bit lanes (at most 8 per step, so 31 steps cannot
// overflow 255) and folded into 64-bit totals with VPSADBW every 31 steps.
#include <immintrin.h>

#include "bitserial/bitserial_gemm_tiled.h"

namespace bayesq {

namespace {

struct Avx2Kernel {
  template <int RA>
  static constexpr int rw() {
    return RA == 1 ? 4 : RA == 2 ? 3 : 2;
  }

  template <int RA, int RW, bool kXor>
  static void tile(const word_t* a, const word_t* w, std::int64_t stride, std::int64_t k0,
                   std::int64_t k1, std::uint32_t* counts, std::int64_t ld, bool add) {
    constexpr int kPairs = RA * RW;
    constexpr std::int64_t kMaxSteps = 31;  // 31 * 8 <= 255
    const __m256i lookup = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4,  //
                                            0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4);
    const __m256i low_nibble = _mm256_set1_epi8(0x0f);
    __m256i total[kPairs];
    for (int q = 0; q < kPairs; ++q) total[q] = _mm256_setzero_si256();
    for (std::int64_t kb = k0; kb < k1; kb += 4 * kMaxSteps) {
      const std::int64_t ke = tiled::min64(k1, kb + 4 * kMaxSteps);
      __m256i bytes[kPairs];
      for (int q = 0; q < kPairs; ++q) bytes[q] = _mm256_setzero_si256();
      for (std::int64_t k = kb; k < ke; k += 4) {
        __m256i va[RA];
        for (int i = 0; i < RA; ++i)
          va[i] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * stride + k));
        for (int j = 0; j < RW; ++j) {
          const __m256i vw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w + j * stride + k));
          for (int i = 0; i < RA; ++i) {
            const __m256i x = kXor ? _mm256_xor_si256(va[i], vw) : _mm256_and_si256(va[i], vw);
            const __m256i lo = _mm256_shuffle_epi8(lookup, _mm256_and_si256(x, low_nibble));
            const __m256i hi = _mm256_shuffle_epi8(
                lookup, _mm256_and_si256(_mm256_srli_epi16(x, 4), low_nibble));
            bytes[i * RW + j] = _mm256_add_epi8(bytes[i * RW + j], _mm256_add_epi8(lo, hi));
          }
        }
      }
      for (int q = 0; q < kPairs; ++q)
        total[q] = _mm256_add_epi64(total[q], _mm256_sad_epu8(bytes[q], _mm256_setzero_si256()));
    }
    for (int q = 0; q < kPairs; ++q) {
      const __m128i s = _mm_add_epi64(_mm256_castsi256_si128(total[q]),
                                      _mm256_extracti128_si256(total[q], 1));
      const auto count = static_cast<std::uint32_t>(_mm_cvtsi128_si64(s) + _mm_extract_epi64(s, 1));
      std::uint32_t& dst = counts[(q / RW) * ld + q % RW];
      dst = add ? dst + count : count;
    }
  }
};

}  // namespace

void bitserial_rect_avx2(const GemmProblem& p, std::int64_t n0, std::int64_t n1,
                         std::int64_t m0, std::int64_t m1) {
  tiled::rect<Avx2Kernel>(p, n0, n1, m0, m1);
}

}  // namespace bayesq
