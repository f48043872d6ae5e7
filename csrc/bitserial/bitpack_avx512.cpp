// Plane extraction, AVX-512 variant (compiled with -mavx512f -mavx512bw; called only when
// resolve_bitserial_isa picked avx512). One VPTESTMB per plane and 64 codes gives the packed
// word directly: bit t of the mask is bit `shift` of byte t.
#include <immintrin.h>

#include "bitserial/bitpack.h"
#include "bitserial/bitpack_quantize_body.h"

namespace bayesq {

void pack_rows_avx512(const std::uint8_t* codes, const std::int64_t* plane_offsets,
                      std::int64_t row_begin, std::int64_t row_end, std::int64_t k,
                      CodeMode mode, word_t* planes) {
  const std::int64_t words = words_per_plane(k);
  const std::int64_t full = k / 64;  // words with 64 real positions
  const int tail = static_cast<int>(k % 64);
  const __mmask64 tail_mask = tail ? (~__mmask64{0} >> (64 - tail)) : 0;
  const bool pm1 = mode == CodeMode::kPlusMinusOne;
  const __m512i flip = _mm512_set1_epi8(pm1 ? static_cast<char>(0x80) : 0);
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const std::uint8_t* row = codes + r * k;
    const int bits = static_cast<int>(plane_offsets[r + 1] - plane_offsets[r]);
    if (bits == 0) continue;
    word_t* out = planes + plane_offsets[r] * words;
    __m512i select[kMaxPlanes];
    for (int j = 0; j < bits; ++j)
      select[j] = _mm512_set1_epi8(static_cast<char>(1u << (pm1 ? 7 : j)));
    for (std::int64_t w = 0; w < full; ++w) {
      const __m512i v = _mm512_xor_si512(_mm512_loadu_si512(row + 64 * w), flip);
      for (int j = 0; j < bits; ++j) out[j * words + w] = _mm512_test_epi8_mask(v, select[j]);
    }
    if (tail) {
      // The masked load reads only the tail's bytes; the masked test keeps positions >= k zero.
      const __m512i v = _mm512_xor_si512(_mm512_maskz_loadu_epi8(tail_mask, row + 64 * full), flip);
      for (int j = 0; j < bits; ++j)
        out[j * words + full] = _mm512_mask_test_epi8_mask(tail_mask, v, select[j]);
    }
    for (std::int64_t w = full + (tail ? 1 : 0); w < words; ++w)
      for (int j = 0; j < bits; ++j) out[j * words + w] = 0;
  }
}

void quantize_rows_avx512(const float* x, const float* scale, std::int64_t scale_stride,
                        std::int64_t r0, std::int64_t r1, std::int64_t k, int bits, CodeMode mode,
                        std::uint8_t* codes, std::int64_t* row_sums, std::int64_t& bad) {
  quantize_rows_body(x, scale, scale_stride, r0, r1, k, bits, mode, codes, row_sums, bad);
}

}  // namespace bayesq
