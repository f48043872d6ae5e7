// The sparse ternary x 8-bit GEMM on AVX2 (ymm: 16 int16 lanes, a 32-row panel tile; the
// gather form by vpgatherdd). Compiled with -mavx2; called only after resolve_sparse_isa found it.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lowbit/sparse_ternary.h"
#include "lowbit/sparse_ternary_adds.h"

namespace {

struct V {
  using reg = __m256i;
  static constexpr int kLanes = 16;
  static inline reg load(const std::int16_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static inline reg zero() { return _mm256_setzero_si256(); }
  static inline reg add(reg a, reg b) { return _mm256_add_epi16(a, b); }
  static inline reg sub(reg a, reg b) { return _mm256_sub_epi16(a, b); }
  // the panel form's innermost adds (lowbit/sparse_ternary_adds.h)
  static inline void add_pair(reg& a0, reg& a1, reg& b0, reg& b1, const std::int16_t* pp,
                              const std::int16_t* pm) {
    bayesq::sparse_add_pair<reg, kLanes>(a0, a1, b0, b1, pp, pm);
  }
  static inline void add_pair1(reg& a0, reg& b0, const std::int16_t* pp, const std::int16_t* pm) {
    bayesq::sparse_add_pair1<reg>(a0, b0, pp, pm);
  }
  static inline void flush(reg v, std::int32_t* dst) {
    __m256i* d = reinterpret_cast<__m256i*>(dst);
    const __m256i lo = _mm256_cvtepi16_epi32(_mm256_castsi256_si128(v));
    const __m256i hi = _mm256_cvtepi16_epi32(_mm256_extracti128_si256(v, 1));
    _mm256_storeu_si256(d, _mm256_add_epi32(_mm256_loadu_si256(d), lo));
    _mm256_storeu_si256(d + 1, _mm256_add_epi32(_mm256_loadu_si256(d + 1), hi));
  }
};

#include "lowbit/sparse_ternary_body.h"

// One (row, block)'s pairs at s: xv at the offsets (block base `base`; entry 255, the
// sentinel's, is 0) summed into eight int32 lanes, eight offsets (four pairs) per vpgatherdd,
// the last step masked to the pairs: the even lanes hold plus terms, the odd ones minus terms.
inline __m256i gather_pairs(const std::int32_t* base, const std::uint8_t* s, std::int64_t pairs) {
  __m256i sum = _mm256_setzero_si256();
  std::int64_t j = 0;
  for (; j + 8 <= 2 * pairs; j += 8) {
    const __m256i i = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + j)));
    sum = _mm256_add_epi32(sum, _mm256_i32gather_epi32(base, i, 4));
  }
  if (j < 2 * pairs) {
    // may run past the pairs: kSparsePad
    const __m256i i = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(s + j)));
    const __m256i keep = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(2 * pairs - j)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    sum = _mm256_add_epi32(
        sum, _mm256_mask_i32gather_epi32(_mm256_setzero_si256(), base, i, keep, 4));
  }
  return sum;
}

// The gather form: activation row m alone, widened to int32 in xv laid out as the panel's
// rows (256 entries per block; entry 255 and those past K are 0), against row groups [g0, g1).
void gather_row(const bayesq::SparseProblem& p, std::int64_t m, std::int64_t g0, std::int64_t g1,
                std::vector<std::int32_t>& xv) {
  const std::int64_t k = p.w.k, blocks = bayesq::sparse_blocks(k), n_out = p.w.rows;
  for (std::int64_t t = 0; t < k; ++t)
    xv[(t / bayesq::kSparseBlock) * kBlockRows + t % bayesq::kSparseBlock] =
        p.is_signed ? static_cast<std::int8_t>(p.x[m * k + t]) : p.x[m * k + t];
  alignas(32) __m256i acc[kRows];
  for (std::int64_t g = g0; g < g1; ++g) {
    for (std::int64_t r = 0; r < kRows; ++r) acc[r] = _mm256_setzero_si256();
    const std::uint8_t* s = p.w.offsets + p.w.starts[g];
    const std::uint8_t* end = p.w.offsets + p.w.starts[g + 1];
    const std::uint8_t* c = p.w.counts + g * blocks * kRows;
    for (std::int64_t b = 0; b < blocks; ++b, c += kRows) {
      const std::int32_t* base = xv.data() + b * kBlockRows;
      for (std::int64_t r = 0; r < kRows; ++r) {
        const std::int64_t pairs = c[r];
        if (pairs == 0) continue;
        bayesq::sparse_check_pairs(pairs, s, end);
        acc[r] = _mm256_add_epi32(acc[r], gather_pairs(base, s, pairs));
        s += 2 * pairs;
      }
    }
    const std::int64_t rows = std::min(kRows, n_out - g * kRows);
    for (std::int64_t r = 0; r < rows; ++r) {
      alignas(32) std::int32_t lanes[8];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[r]);
      std::uint32_t y = 0;  // mod 2^32: the true sum fits int32
      for (int l = 0; l < 8; l += 2)
        y += static_cast<std::uint32_t>(lanes[l]) - static_cast<std::uint32_t>(lanes[l + 1]);
      p.out[m * n_out + g * kRows + r] = static_cast<std::int32_t>(y);
    }
  }
}

}  // namespace

namespace bayesq {

std::int64_t sparse_tile_rows_avx2(std::int64_t m) { return tile_rows(m); }

void sparse_panel_avx2(const SparseProblem& p, std::int64_t u0, std::int64_t u1) {
  build_panel_any(p, u0, u1);
}

void sparse_rect_avx2(const SparseProblem& p, std::int64_t m0, std::int64_t m1, std::int64_t g0,
                      std::int64_t g1) {
  if (p.panel != nullptr) {
    panel_rect_any(p, m0, m1, g0, g1);
    return;
  }
  std::vector<std::int32_t> xv(static_cast<std::size_t>(sparse_padded_k(p.w.k)), 0);
  for (std::int64_t m = m0; m < m1; ++m) gather_row(p, m, g0, g1, xv);
}

}  // namespace bayesq
