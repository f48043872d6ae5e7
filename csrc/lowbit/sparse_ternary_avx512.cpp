// The sparse ternary x 8-bit GEMM on AVX-512 (zmm: 32 int16 lanes, a 64-row panel tile; the
// gather form by VBMI's vpermi2b). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vbmi;
// called only after resolve_sparse_isa found them all.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lowbit/sparse_ternary.h"
#include "lowbit/sparse_ternary_adds.h"

namespace {

struct V {
  using reg = __m512i;
  static constexpr int kLanes = 32;
  static inline reg load(const std::int16_t* p) { return _mm512_loadu_si512(p); }
  static inline reg zero() { return _mm512_setzero_si512(); }
  static inline reg add(reg a, reg b) { return _mm512_add_epi16(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_epi16(a, b); }
  // the panel form's innermost adds (lowbit/sparse_ternary_adds.h)
  static inline void add_pair(reg& a0, reg& a1, reg& b0, reg& b1, const std::int16_t* pp,
                              const std::int16_t* pm) {
    bayesq::sparse_add_pair<reg, kLanes>(a0, a1, b0, b1, pp, pm);
  }
  static inline void add_pair1(reg& a0, reg& b0, const std::int16_t* pp, const std::int16_t* pm) {
    bayesq::sparse_add_pair1<reg>(a0, b0, pp, pm);
  }
  static inline void flush(reg v, std::int32_t* dst) {
    const __m512i lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v));
    const __m512i hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1));
    _mm512_storeu_si512(dst, _mm512_add_epi32(_mm512_loadu_si512(dst), lo));
    _mm512_storeu_si512(dst + 16, _mm512_add_epi32(_mm512_loadu_si512(dst + 16), hi));
  }
};

#include "lowbit/sparse_ternary_body.h"

// One (row, block)'s pairs at s (pairs <= 255) against G activation rows' tables of the block
// (t[q][0..3]: 256 bytes of u = x, + 128 in signed mode; byte 255, the sentinel's, is 0): for
// each row q, sum of u at the plus offsets minus sum at the minus ones, added to sum[q] as 16
// int32 partial sums. 32 pairs (64 offsets) per step, loaded once for the G rows: each offset
// looked up by two vpermi2b (its bit 7 picks the half), the step's tail masked off, then
// vpmaddubsw by (+1, -1) takes each pair's difference and vpmaddwd by 1 widens.
template <int G>
inline void lookup_pairs(const std::uint8_t* s, std::int64_t pairs, const __m512i (*t)[4],
                         __m512i* sum) {
  const __m512i sign = _mm512_set1_epi16(static_cast<short>(0xFF01));  // bytes +1, -1
  const __m512i ones = _mm512_set1_epi16(1);
  // At least one step, also for no pairs (all masked off): no branch on whether a (row, block)
  // is empty, which at 90 % zeros and more is as good as random.
  std::int64_t j = 0;
  do {
    const std::int64_t left = 2 * pairs - j;
    const __mmask64 keep = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    const __m512i i = _mm512_loadu_si512(s + j);  // may run past the pairs: kSparsePad
    const __mmask64 high = _mm512_movepi8_mask(i);
    for (int q = 0; q < G; ++q) {
      const __m512i lo = _mm512_maskz_permutex2var_epi8(keep & ~high, t[q][0], i, t[q][1]);
      const __m512i hi = _mm512_maskz_permutex2var_epi8(keep & high, t[q][2], i, t[q][3]);
      const __m512i diff = _mm512_maddubs_epi16(_mm512_or_si512(lo, hi), sign);
      sum[q] = _mm512_add_epi32(sum[q], _mm512_madd_epi16(diff, ones));
    }
    j += 64;
  } while (j < 2 * pairs);
}

// The gather form: G activation rows m .. m + G - 1 together (the pairs are read once for
// all) against row groups [g0, g1). u: each row's u = x (XOR 0x80 in signed mode: x + 128)
// laid out as the panel's rows, 256 bytes per block (byte 255 and those past K are 0); out =
// the lookups' sum - 128 row_sums in signed mode.
template <int G>
void lookup_rows(const bayesq::SparseProblem& p, std::int64_t m, std::int64_t g0, std::int64_t g1,
                 std::vector<std::uint8_t>& u) {
  const std::int64_t k = p.w.k, blocks = bayesq::sparse_blocks(k), n_out = p.w.rows;
  const std::int64_t kp = bayesq::sparse_padded_k(k);
  const std::uint8_t flip = p.is_signed ? 0x80 : 0x00;
  for (int q = 0; q < G; ++q)
    for (std::int64_t t = 0; t < k; ++t)
      u[q * kp + (t / bayesq::kSparseBlock) * kBlockRows + t % bayesq::kSparseBlock] =
          p.x[(m + q) * k + t] ^ flip;
  alignas(64) __m512i acc[kRows][G];
  for (std::int64_t g = g0; g < g1; ++g) {
    for (std::int64_t r = 0; r < kRows; ++r)
      for (int q = 0; q < G; ++q) acc[r][q] = _mm512_setzero_si512();
    const std::uint8_t* s = p.w.offsets + p.w.starts[g];
    const std::uint8_t* end = p.w.offsets + p.w.starts[g + 1];
    const std::uint8_t* c = p.w.counts + g * blocks * kRows;
    for (std::int64_t b = 0; b < blocks; ++b, c += kRows) {
      __m512i t[G][4];
      for (int q = 0; q < G; ++q)
        for (int h = 0; h < 4; ++h) t[q][h] = _mm512_loadu_si512(u.data() + q * kp + b * kBlockRows + 64 * h);
      for (std::int64_t r = 0; r < kRows; ++r) {
        const std::int64_t pairs = c[r];
        bayesq::sparse_check_pairs(pairs, s, end);
        lookup_pairs<G>(s, pairs, t, acc[r]);
        s += 2 * pairs;
      }
    }
    const std::int64_t rows = std::min(kRows, n_out - g * kRows);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t n = g * kRows + r;
      const std::uint32_t corr = p.is_signed ? 128u * static_cast<std::uint32_t>(p.w.row_sums[n]) : 0u;
      for (int q = 0; q < G; ++q)  // mod 2^32: the true sum fits int32
        p.out[(m + q) * n_out + n] = static_cast<std::int32_t>(
            static_cast<std::uint32_t>(_mm512_reduce_add_epi32(acc[r][q])) - corr);
    }
  }
}

// The 32 int16 lanes' running sums: lane i = v[0] + ... + v[i] (five shifted adds).
inline __m512i prefix16(__m512i v) {
  alignas(64) static const std::int16_t kIota[32] = {0,  1,  2,  3,  4,  5,  6,  7,  8,  9,  10,
                                                     11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
                                                     22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
  const __m512i iota = _mm512_load_si512(kIota);
  for (int shift = 1; shift < 32; shift *= 2) {
    const __mmask32 from = ~((__mmask32(1) << shift) - 1);  // lanes i >= shift take lane i - shift
    const __m512i moved = _mm512_maskz_permutexvar_epi16(
        from, _mm512_sub_epi16(iota, _mm512_set1_epi16(static_cast<short>(shift))), v);
    v = _mm512_add_epi16(v, moved);
  }
  return v;
}

// The gather form by running sums: rather than one lookup step per (row, block) (a loop, a
// mask, a reduction for a handful of pairs when most weights are zero), the block's whole
// stream, every row of the group one after another, is looked up 32 pairs (a chunk) at a time,
// without regard to where rows begin: the pairs' differences (vpmaddubsw by (+1, -1)) become
// running sums within the chunk (prefix16, exclusive: lane i holds the sum of lanes < i), and
// each chunk's total is added up in `base`. The sum over the stream's first e pairs is then
// base[e / 32] + run[e], and a row's share is that at its end minus that at its start: two
// loads and no branch per (row, block). Rows m .. m + G - 1 together; u, the correction and out
// as in lookup_rows. run: G x (64 * 255 + 64) int16, base: G x 514 uint32 (the most pairs a
// block's stream holds, 64 rows x 255, and one chunk more).
template <int G>
void lookup_rows_running(const bayesq::SparseProblem& p, std::int64_t m, std::int64_t g0,
                         std::int64_t g1, std::vector<std::uint8_t>& u,
                         std::vector<std::int16_t>& run, std::vector<std::uint32_t>& base) {
  const std::int64_t k = p.w.k, blocks = bayesq::sparse_blocks(k), n_out = p.w.rows;
  const std::int64_t kp = bayesq::sparse_padded_k(k);
  constexpr std::int64_t kRun = kRows * 255 + 64, kBase = 514;
  const std::uint8_t flip = p.is_signed ? 0x80 : 0x00;
  for (int q = 0; q < G; ++q)
    for (std::int64_t t = 0; t < k; ++t)
      u[q * kp + (t / bayesq::kSparseBlock) * kBlockRows + t % bayesq::kSparseBlock] =
          p.x[(m + q) * k + t] ^ flip;
  const __m512i sign = _mm512_set1_epi16(static_cast<short>(0xFF01));  // bytes +1, -1
  std::uint32_t y[kRows][G];
  for (std::int64_t g = g0; g < g1; ++g) {
    for (std::int64_t r = 0; r < kRows; ++r)
      for (int q = 0; q < G; ++q) y[r][q] = 0;
    const std::uint8_t* s = p.w.offsets + p.w.starts[g];
    const std::uint8_t* end = p.w.offsets + p.w.starts[g + 1];
    const std::uint8_t* c = p.w.counts + g * blocks * kRows;
    for (std::int64_t b = 0; b < blocks; ++b, c += kRows) {
      std::int64_t total = 0;  // the block's pairs
      for (std::int64_t r = 0; r < kRows; ++r) total += c[r];
      bayesq::sparse_check_pairs(total, s, end);
      __m512i t[G][4];
      for (int q = 0; q < G; ++q)
        for (int h = 0; h < 4; ++h)
          t[q][h] = _mm512_loadu_si512(u.data() + q * kp + b * kBlockRows + 64 * h);
      // chunks 0 .. total / 32: the last may run past the block's stream (into the next
      // block's, or the pad), whose lanes only its own later lanes and its total see
      for (std::int64_t j = 0; j <= total / 32; ++j) {
        const __m512i i = _mm512_loadu_si512(s + 64 * j);
        const __mmask64 high = _mm512_movepi8_mask(i);
        for (int q = 0; q < G; ++q) {
          const __m512i lo = _mm512_maskz_permutex2var_epi8(~high, t[q][0], i, t[q][1]);
          const __m512i hi = _mm512_maskz_permutex2var_epi8(high, t[q][2], i, t[q][3]);
          const __m512i diff = _mm512_maddubs_epi16(_mm512_or_si512(lo, hi), sign);
          const __m512i inclusive = prefix16(diff);
          _mm512_storeu_si512(run.data() + q * kRun + 32 * j, _mm512_sub_epi16(inclusive, diff));
          const auto last = static_cast<std::int16_t>(
              _mm_extract_epi16(_mm512_extracti32x4_epi32(inclusive, 3), 7));
          base[q * kBase + j + 1] = base[q * kBase + j] + static_cast<std::uint32_t>(last);
        }
      }
      std::int64_t e = 0;
      std::uint32_t at[G] = {};  // the running sum at the end of the row before (e = 0: 0)
      for (std::int64_t r = 0; r < kRows; ++r) {
        e += c[r];
        for (int q = 0; q < G; ++q) {
          const std::uint32_t next =
              base[q * kBase + e / 32] + static_cast<std::uint32_t>(run[q * kRun + e]);
          y[r][q] += next - at[q];
          at[q] = next;
        }
      }
      s += 2 * total;
    }
    const std::int64_t rows = std::min(kRows, n_out - g * kRows);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t n = g * kRows + r;
      const std::uint32_t corr = p.is_signed ? 128u * static_cast<std::uint32_t>(p.w.row_sums[n]) : 0u;
      for (int q = 0; q < G; ++q)  // mod 2^32: the true sum fits int32
        p.out[(m + q) * n_out + n] = static_cast<std::int32_t>(y[r][q] - corr);
    }
  }
}

}  // namespace

namespace bayesq {

std::int64_t sparse_tile_rows_avx512(std::int64_t m) { return tile_rows(m); }

void sparse_panel_avx512(const SparseProblem& p, std::int64_t u0, std::int64_t u1) {
  build_panel_any(p, u0, u1);
}

void sparse_rect_avx512(const SparseProblem& p, std::int64_t m0, std::int64_t m1,
                        std::int64_t g0, std::int64_t g1) {
  if (p.panel != nullptr) {
    panel_rect_any(p, m0, m1, g0, g1);
    return;
  }
  // up to 4 rows at a time: 16 registers of tables, the pairs loaded once
  std::vector<std::uint8_t> u(static_cast<std::size_t>(4 * sparse_padded_k(p.w.k)), 0);
  std::int64_t m = m0;
  if (sparse_running_form(p.w)) {
    std::vector<std::int16_t> run(static_cast<std::size_t>(4 * (kRows * 255 + 64)));
    std::vector<std::uint32_t> base(static_cast<std::size_t>(4 * 514), 0);
    for (; m + 4 <= m1; m += 4) lookup_rows_running<4>(p, m, g0, g1, u, run, base);
    if (m1 - m == 3) lookup_rows_running<3>(p, m, g0, g1, u, run, base);
    if (m1 - m == 2) lookup_rows_running<2>(p, m, g0, g1, u, run, base);
    if (m1 - m == 1) lookup_rows_running<1>(p, m, g0, g1, u, run, base);
    return;
  }
  for (; m + 4 <= m1; m += 4) lookup_rows<4>(p, m, g0, g1, u);
  if (m1 - m == 3) lookup_rows<3>(p, m, g0, g1, u);
  if (m1 - m == 2) lookup_rows<2>(p, m, g0, g1, u);
  if (m1 - m == 1) lookup_rows<1>(p, m, g0, g1, u);
}

}  // namespace bayesq
