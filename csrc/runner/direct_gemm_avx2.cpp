// The direct GEMM's AVX2 path (direct_gemm.h), for x86-64 CPUs without VNNI (AMD Zen 1-3, Intel
// cores before Ice Lake and Alder Lake). Compiled with -mavx2 (no FMA: the epilogue's multiply and
// add stay two roundings) and called only after cpu_features() found AVX2.
//
// AVX2 has no 8-bit dot product into int32. `vpmaddubsw` multiplies 32 unsigned bytes by 32
// signed bytes and adds adjacent pairs into 16 int16 lanes, saturating; `vpmaddwd` by ones then
// adds adjacent int16 pairs into int32. Paying both per group of 4 weights (what an int8 GEMM
// without VNNI does) halves the throughput on cores where the two share the multiply pipes (Zen
// 3: two). Here a pair never saturates (2 * act_max * max|w| <= 32767, direct_avx2_steps) and up
// to `steps` of them are summed in int16 (vpaddw, any vector pipe) before one vpmaddwd widens
// them: for ternary weights that is 64 groups at 8-bit activations, 1092 at 4-bit ones, so the
// loop is one vpmaddubsw per 32 multiply-adds.
//
// The weights are the VNNI path's layout (DirectWeights): a 64-byte group of 16 outputs is two
// 32-byte halves of 8 outputs x 4 weights, each int32 lane of a half one output's 4 weights, so a
// broadcast of a row's 4 activation bytes meets them lane for lane.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "common/add_i16.h"
#include "runner/direct_gemm.h"

namespace bayesq {

namespace {

constexpr std::int64_t kHalfLanes = 8;  // outputs per 256-bit vector of int32

// A register tile: R activation rows x H halves (8 outputs each) from half q0 on; R * H int16
// sums, widened into R * H int32 accumulators every `steps` groups.
template <int R, int H, bool kSigned, bool kPool>
void tile(const std::uint8_t* x, std::int64_t x_stride, const DirectWeights& w, std::int64_t q0,
          std::int64_t steps, const DirectEpilogue& e, float* out) {
  static_assert(!kPool || R == 4, "a pooled tile is one 2 x 2 window");
  const std::int8_t* wq[H];
  for (int h = 0; h < H; ++h)
    wq[h] = w.data() + ((q0 + h) / 2) * w.groups * 64 + ((q0 + h) % 2) * 32;
  __m256i acc[R][H];
  for (int r = 0; r < R; ++r)
    for (int h = 0; h < H; ++h) acc[r][h] = _mm256_setzero_si256();
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i flip = _mm256_set1_epi8(static_cast<char>(0x80));
  for (std::int64_t g0 = 0; g0 < w.groups; g0 += steps) {
    const std::int64_t g1 = std::min(w.groups, g0 + steps);
    __m256i sum[R][H];
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h) sum[r][h] = _mm256_setzero_si256();
    for (std::int64_t g = g0; g < g1; ++g) {
      __m256i wv[H];  // 32-byte aligned: the packed bytes start 64-byte aligned
      for (int h = 0; h < H; ++h)
        wv[h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(wq[h] + g * 64));
      for (int r = 0; r < R; ++r) {
        std::int32_t four;
        std::memcpy(&four, x + r * x_stride + 4 * g, 4);
        __m256i xb = _mm256_set1_epi32(four);
        if (kSigned) xb = _mm256_xor_si256(xb, flip);  // u = x + 128
        for (int h = 0; h < H; ++h)  // in place (common/add_i16.h)
          add_i16(sum[r][h], _mm256_maddubs_epi16(xb, wv[h]));
      }
    }
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h)
        acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_madd_epi16(sum[r][h], ones));
  }
  const __m256 act_scale = _mm256_set1_ps(e.act_scale);
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int h = 0; h < H; ++h) {
    const std::int64_t n = (q0 + h) * kHalfLanes;
    const std::int64_t valid = std::min(kHalfLanes, w.n - n);
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(valid)), lane);
    const __m256 row_scale = _mm256_maskload_ps(e.row_scale + n, mask);
    const __m256 bias = _mm256_maskload_ps(e.bias + n, mask);
    const __m256i corr = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w.corr.data() + n));
    if (kSigned)  // the true products first: u . w may have wrapped around, x . w has not
      for (int r = 0; r < R; ++r) acc[r][h] = _mm256_sub_epi32(acc[r][h], corr);
    if (kPool) {  // the window's largest integer, its smallest where row_scale < 0 (header)
      const __m256i hi = _mm256_max_epi32(_mm256_max_epi32(acc[0][h], acc[1][h]),
                                          _mm256_max_epi32(acc[2][h], acc[3][h]));
      const __m256i lo = _mm256_min_epi32(_mm256_min_epi32(acc[0][h], acc[1][h]),
                                          _mm256_min_epi32(acc[2][h], acc[3][h]));
      const __m256 negative = _mm256_cmp_ps(row_scale, _mm256_setzero_ps(), _CMP_LT_OQ);
      acc[0][h] = _mm256_blendv_epi8(hi, lo, _mm256_castps_si256(negative));
    }
    for (int r = 0; r < (kPool ? 1 : R); ++r) {
      // the reference's float32 operations, in its order, each rounded
      __m256 f = _mm256_mul_ps(_mm256_cvtepi32_ps(acc[r][h]), row_scale);
      f = _mm256_mul_ps(f, act_scale);
      f = _mm256_add_ps(f, bias);
      _mm256_maskstore_ps(out + r * w.n + n, mask, f);
    }
  }
}

using TileFn = void (*)(const std::uint8_t*, std::int64_t, const DirectWeights&, std::int64_t,
                        std::int64_t, const DirectEpilogue&, float*);

template <bool kSigned>
TileFn pick(int r, int h, bool pool) {
  static const TileFn table[4][2] = {
      {tile<1, 1, kSigned, false>, tile<1, 2, kSigned, false>},
      {tile<2, 1, kSigned, false>, tile<2, 2, kSigned, false>},
      {tile<3, 1, kSigned, false>, tile<3, 2, kSigned, false>},
      {tile<4, 1, kSigned, false>, tile<4, 2, kSigned, false>}};
  static const TileFn pooled[2] = {tile<4, 1, kSigned, true>, tile<4, 2, kSigned, true>};
  return pool ? pooled[h - 1] : table[r - 1][h - 1];
}

}  // namespace

void direct_rows_avx2(const std::uint8_t* x, std::int64_t m0, std::int64_t m1,
                      std::int64_t x_stride, bool is_signed, const DirectWeights& w,
                      const DirectEpilogue& e, float* out, bool pool4, std::int64_t steps) {
  // Blocks of kBlockRows rows (64 x K bytes, in L1/L2 for the K of our nets) meet every output
  // before the next block is read: the weights of a small net's layer stay in L2 throughout.
  constexpr std::int64_t kBlockRows = 64;
  const std::int64_t halves = (w.n + kHalfLanes - 1) / kHalfLanes;
  for (std::int64_t b0 = m0; b0 < m1; b0 += kBlockRows) {
    const std::int64_t b1 = std::min(m1, b0 + kBlockRows);
    for (std::int64_t q0 = 0; q0 < halves; q0 += 2) {
      const int h = static_cast<int>(std::min<std::int64_t>(2, halves - q0));
      for (std::int64_t m = b0; m < b1; m += 4) {
        const int r = static_cast<int>(std::min<std::int64_t>(4, b1 - m));
        const TileFn fn = is_signed ? pick<true>(r, h, pool4) : pick<false>(r, h, pool4);
        fn(x + m * x_stride, x_stride, w, q0, steps, e, out + (pool4 ? m / 4 : m) * w.n);
      }
    }
  }
}

}  // namespace bayesq
