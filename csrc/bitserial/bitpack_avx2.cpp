// Plane extraction, AVX2 variant (compiled with -mavx2; called only when the CPU has AVX2).
// Shifting bit `shift` of every byte to its top (a 16-bit shift moves nothing across the top of
// a byte that matters here) and VPMOVMSKB give 32 positions of a packed word at a time.
#include <immintrin.h>

#include <cstring>

#include "bitserial/bitpack.h"
#include "bitserial/bitpack_quantize_body.h"

namespace bayesq {

namespace {

inline std::uint32_t plane_bits32(__m256i v, int shift) {
  const __m128i count = _mm_cvtsi32_si128(7 - shift);
  return static_cast<std::uint32_t>(_mm256_movemask_epi8(_mm256_sll_epi16(v, count)));
}

}  // namespace

void pack_rows_avx2(const std::uint8_t* codes, const std::int64_t* plane_offsets,
                    std::int64_t row_begin, std::int64_t row_end, std::int64_t k, CodeMode mode,
                    word_t* planes) {
  const std::int64_t words = words_per_plane(k);
  const std::int64_t full = k / 64;
  const int tail = static_cast<int>(k % 64);
  const bool pm1 = mode == CodeMode::kPlusMinusOne;
  const __m256i flip = _mm256_set1_epi8(pm1 ? static_cast<char>(0x80) : 0);
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const std::uint8_t* row = codes + r * k;
    const int bits = static_cast<int>(plane_offsets[r + 1] - plane_offsets[r]);
    if (bits == 0) continue;
    word_t* out = planes + plane_offsets[r] * words;
    auto emit = [&](const std::uint8_t* src, std::int64_t w, word_t keep) {
      const __m256i lo = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src)), flip);
      const __m256i hi = _mm256_xor_si256(
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + 32)), flip);
      for (int j = 0; j < bits; ++j) {
        const int shift = pm1 ? 7 : j;
        out[j * words + w] =
            (plane_bits32(lo, shift) | static_cast<word_t>(plane_bits32(hi, shift)) << 32) & keep;
      }
    };
    for (std::int64_t w = 0; w < full; ++w) emit(row + 64 * w, w, ~word_t{0});
    if (tail) {
      // Copy the tail into a zeroed block (never read past the row) and drop positions >= k.
      alignas(32) std::uint8_t block[64] = {};
      std::memcpy(block, row + 64 * full, static_cast<std::size_t>(tail));
      emit(block, full, (word_t{1} << tail) - 1);
    }
    for (std::int64_t w = full + (tail ? 1 : 0); w < words; ++w)
      for (int j = 0; j < bits; ++j) out[j * words + w] = 0;
  }
}

void quantize_rows_avx2(const float* x, const float* scale, std::int64_t scale_stride,
                        std::int64_t r0, std::int64_t r1, std::int64_t k, int bits, CodeMode mode,
                        std::uint8_t* codes, std::int64_t* row_sums, std::int64_t& bad) {
  quantize_rows_body(x, scale, scale_stride, r0, r1, k, bits, mode, codes, row_sums, bad);
}

}  // namespace bayesq
