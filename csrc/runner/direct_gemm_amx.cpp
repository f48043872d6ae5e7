// The direct GEMM's AMX-INT8 path (direct_gemm.h): the same product and epilogue as the VNNI path,
// with the dot products on AMX tiles. `tdpbusd` multiplies a 16 x 64 tile of u8 activations by a
// 16 x 64 tile of s8 weights in the layout of DirectAmxWeights (16 groups of 4 K values x 16
// outputs x 4 bytes: the VNNI order of DirectWeights, K padded to whole tiles of 64) into a
// 16 x 16 tile of int32: 16384 multiply-adds per instruction against vpdpbusd's 64. A block of
// 32 rows x 32 outputs keeps 4 accumulator tiles; the epilogue (signed correction, the fused 2 x 2
// pooling, the scaling) runs on AVX-512 over the accumulators stored to the stack.
//
// Compiled with -mamx-tile -mamx-int8 -mavx512f -mavx512bw -mavx512vl; called only after
// direct_amx_available(), which also asks Linux for the tile state (arch_prctl).
#include <immintrin.h>

#include <cstring>

#include "runner/direct_gemm.h"

namespace bayesq {

namespace {

// The tile configuration: palette 1, tiles 0-3 the accumulators (16 rows of 16 int32), 4-5 the
// activations (16 rows of 64 bytes), 6-7 the weights (16 rows of 64 bytes).
struct alignas(64) TileConfig {
  std::uint8_t palette = 1, start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

void load_config() {
  TileConfig cfg;
  for (int t = 0; t < 8; ++t) {
    cfg.colsb[t] = 64;
    cfg.rows[t] = 16;
  }
  _tile_loadconfig(&cfg);
}

// The epilogue of one row of 16 outputs (direct_gemm_avx512vnni.cpp's, on stored accumulators).
template <bool kPool>
inline void finish(const std::int32_t* acc, std::int64_t acc_stride, std::int64_t rows,
                   bool is_signed, const DirectAmxWeights& w, std::int64_t n,
                   const DirectEpilogue& e, float* out, std::int64_t out_stride) {
  const std::int64_t valid = w.n - n < kDirectLanes ? w.n - n : kDirectLanes;
  if (valid <= 0) return;
  const __mmask16 mask = static_cast<__mmask16>((1u << valid) - 1u);
  const __m512 row_scale = _mm512_maskz_loadu_ps(mask, e.row_scale + n);
  const __m512 bias = _mm512_maskz_loadu_ps(mask, e.bias + n);
  const __m512 act_scale = _mm512_set1_ps(e.act_scale);
  const __m512i corr = is_signed ? _mm512_loadu_si512(w.corr.data() + n) : _mm512_setzero_si512();
  const __mmask16 negative = _mm512_cmp_ps_mask(row_scale, _mm512_setzero_ps(), _CMP_LT_OQ);
  const std::int64_t step = kPool ? 4 : 1;
  for (std::int64_t r = 0; r + step <= rows; r += step) {
    __m512i v = _mm512_sub_epi32(_mm512_loadu_si512(acc + r * acc_stride), corr);
    if (kPool) {  // the window's largest integer, its smallest where row_scale < 0
      __m512i hi = v, lo = v;
      for (int q = 1; q < 4; ++q) {
        const __m512i o = _mm512_sub_epi32(_mm512_loadu_si512(acc + (r + q) * acc_stride), corr);
        hi = _mm512_max_epi32(hi, o);
        lo = _mm512_min_epi32(lo, o);
      }
      v = _mm512_mask_blend_epi32(negative, hi, lo);
    }
    __m512 f = _mm512_mul_ps(_mm512_cvtepi32_ps(v), row_scale);
    f = _mm512_mul_ps(f, act_scale);
    f = _mm512_add_ps(f, bias);
    _mm512_mask_storeu_ps(out + (r / step) * out_stride + n, mask, f);
  }
}

}  // namespace

void direct_rows_amx(const std::uint8_t* x, std::int64_t m0, std::int64_t m1,
                     std::int64_t x_stride, bool is_signed, const DirectAmxWeights& w,
                     const DirectEpilogue& e, float* out, bool pool4) {
  load_config();
  const std::int64_t tiles_k = w.groups / 16;  // K / 64
  const std::int64_t chunk_bytes = w.groups * 64;
  alignas(64) std::int32_t acc[32 * 32];
  // Panels of kPanelChunks * 16 outputs: a panel's weights (K bytes per output) stay in L2 while
  // every block of 32 rows passes, and a block's rows (32 x K bytes) stay in L1/L2 while the
  // panel's 32-output blocks pass; without panels the rows would stream from memory once per 32
  // outputs.
  constexpr std::int64_t kPanelChunks = 16;
  for (std::int64_t p0 = 0; p0 < w.chunks; p0 += kPanelChunks)
  for (std::int64_t m = m0; m < m1; m += 32)  // x has whole blocks of 32 rows (zeros past m1)
  for (std::int64_t c0 = p0; c0 < w.chunks && c0 < p0 + kPanelChunks; c0 += 2) {  // w.chunks is even
    const std::int8_t* b0 = w.data() + c0 * chunk_bytes;
    const std::int8_t* b1 = b0 + chunk_bytes;
    {
      const std::uint8_t* a0 = x + m * x_stride;
      const std::uint8_t* a1 = a0 + 16 * x_stride;
      _tile_zero(0);
      _tile_zero(1);
      _tile_zero(2);
      _tile_zero(3);
      for (std::int64_t t = 0; t < tiles_k; ++t) {
        _tile_loadd(4, a0 + 64 * t, x_stride);
        _tile_loadd(5, a1 + 64 * t, x_stride);
        _tile_loadd(6, b0 + 1024 * t, 64);
        _tile_loadd(7, b1 + 1024 * t, 64);
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
      }
      _tile_stored(0, acc, 128);
      _tile_stored(1, acc + 16, 128);
      _tile_stored(2, acc + 16 * 32, 128);
      _tile_stored(3, acc + 16 * 32 + 16, 128);
      const std::int64_t rows = m1 - m < 32 ? m1 - m : 32;
      for (int half = 0; half < 2; ++half) {
        const std::int64_t n = (c0 + half) * kDirectLanes;
        if (pool4)
          finish<true>(acc + 16 * half, 32, rows, is_signed, w, n, e, out + (m / 4) * w.n, w.n);
        else
          finish<false>(acc + 16 * half, 32, rows, is_signed, w, n, e, out + m * w.n, w.n);
      }
    }
  }
  _tile_release();
}

}  // namespace bayesq
