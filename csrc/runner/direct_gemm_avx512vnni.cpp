// The direct GEMM's AVX-512 VNNI path (direct_gemm.h). Compiled with -mavx512f -mavx512bw
// -mavx512vl -mavx512vnni and called only after direct_gemm_available().
#include <immintrin.h>

#include <cstring>

#include "runner/direct_gemm.h"

namespace bayesq {

namespace {

// A register tile: R activation rows x C chunks of 16 outputs, R * C accumulators (<= 16 of the
// 32 zmm registers), the weights of a group loaded once for all R rows.
template <int R, int C, bool kSigned, bool kPool>
void tile(const std::uint8_t* x, std::int64_t x_stride, const DirectWeights& w, std::int64_t chunk0,
          const DirectEpilogue& e, float* out) {
  static_assert(!kPool || R == 4, "a pooled tile is one 2 x 2 window");
  const std::int64_t chunk_bytes = w.groups * 64;
  const std::int8_t* wbase = w.data() + chunk0 * chunk_bytes;
  __m512i acc[R][C];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < C; ++c) acc[r][c] = _mm512_setzero_si512();
  const __m512i flip = _mm512_set1_epi8(static_cast<char>(0x80));
  for (std::int64_t g = 0; g < w.groups; ++g) {
    __m512i wv[C];
    for (int c = 0; c < C; ++c) wv[c] = _mm512_loadu_si512(wbase + c * chunk_bytes + g * 64);
    for (int r = 0; r < R; ++r) {
      std::int32_t four;
      std::memcpy(&four, x + r * x_stride + 4 * g, 4);
      __m512i xb = _mm512_set1_epi32(four);
      if (kSigned) xb = _mm512_xor_si512(xb, flip);  // u = x + 128
      for (int c = 0; c < C; ++c) acc[r][c] = _mm512_dpbusd_epi32(acc[r][c], xb, wv[c]);
    }
  }
  const __m512 act_scale = _mm512_set1_ps(e.act_scale);
  for (int c = 0; c < C; ++c) {
    const std::int64_t n = (chunk0 + c) * kDirectLanes;
    const std::int64_t valid = w.n - n < kDirectLanes ? w.n - n : kDirectLanes;
    const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
    const __m512 row_scale = _mm512_maskz_loadu_ps(mask, e.row_scale + n);
    const __m512 bias = _mm512_maskz_loadu_ps(mask, e.bias + n);
    const __m512i corr = _mm512_loadu_si512(w.corr.data() + n);
    if (kSigned)  // the true products first: u . w may have wrapped around, x . w has not
      for (int r = 0; r < R; ++r) acc[r][c] = _mm512_sub_epi32(acc[r][c], corr);
    if (kPool) {  // the window's largest integer, its smallest where row_scale < 0 (header)
      const __m512i hi = _mm512_max_epi32(_mm512_max_epi32(acc[0][c], acc[1][c]),
                                          _mm512_max_epi32(acc[2][c], acc[3][c]));
      const __m512i lo = _mm512_min_epi32(_mm512_min_epi32(acc[0][c], acc[1][c]),
                                          _mm512_min_epi32(acc[2][c], acc[3][c]));
      const __mmask16 negative = _mm512_cmp_ps_mask(row_scale, _mm512_setzero_ps(), _CMP_LT_OQ);
      acc[0][c] = _mm512_mask_blend_epi32(negative, hi, lo);
    }
    for (int r = 0; r < (kPool ? 1 : R); ++r) {
      const __m512i v = acc[r][c];
      // the reference's float32 operations, in its order, each rounded
      __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), row_scale);
      f = _mm512_mul_ps(f, act_scale);
      f = _mm512_add_ps(f, bias);
      _mm512_mask_storeu_ps(out + r * w.n + n, mask, f);
    }
  }
}

using TileFn = void (*)(const std::uint8_t*, std::int64_t, const DirectWeights&, std::int64_t,
                        const DirectEpilogue&, float*);

template <bool kSigned>
TileFn pick(int r, int c, bool pool) {
  static const TileFn table[4][4] = {
      {tile<1, 1, kSigned, false>, tile<1, 2, kSigned, false>, tile<1, 3, kSigned, false>,
       tile<1, 4, kSigned, false>},
      {tile<2, 1, kSigned, false>, tile<2, 2, kSigned, false>, tile<2, 3, kSigned, false>,
       tile<2, 4, kSigned, false>},
      {tile<3, 1, kSigned, false>, tile<3, 2, kSigned, false>, tile<3, 3, kSigned, false>,
       tile<3, 4, kSigned, false>},
      {tile<4, 1, kSigned, false>, tile<4, 2, kSigned, false>, tile<4, 3, kSigned, false>,
       tile<4, 4, kSigned, false>}};
  static const TileFn pooled[4] = {tile<4, 1, kSigned, true>, tile<4, 2, kSigned, true>,
                                   tile<4, 3, kSigned, true>, tile<4, 4, kSigned, true>};
  return pool ? pooled[c - 1] : table[r - 1][c - 1];
}

}  // namespace

void direct_rows_avx512vnni(const std::uint8_t* x, std::int64_t m0, std::int64_t m1,
                            std::int64_t x_stride, bool is_signed, const DirectWeights& w,
                            const DirectEpilogue& e, float* out, bool pool4) {
  // 4 chunks (64 outputs) of weights at a time, swept over all the rows: a block of weights is
  // 256 * K bytes, which stays in L1/L2 while the rows stream past it.
  for (std::int64_t c0 = 0; c0 < w.chunks; c0 += 4) {
    const int c = static_cast<int>(w.chunks - c0 < 4 ? w.chunks - c0 : 4);
    for (std::int64_t m = m0; m < m1; m += 4) {
      const int r = static_cast<int>(m1 - m < 4 ? m1 - m : 4);
      const TileFn fn = is_signed ? pick<true>(r, c, pool4) : pick<false>(r, c, pool4);
      fn(x + m * x_stride, x_stride, w, c0, e, out + (pool4 ? m / 4 : m) * w.n);
    }
  }
}

}  // namespace bayesq
