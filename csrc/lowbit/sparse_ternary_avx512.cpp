// The sparse ternary x 8-bit GEMM on AVX-512 (zmm: 32 int16 lanes, a 64-row panel tile; the
// gather form by VBMI's vpermi2b). Compiled with -mavx512f -mavx512bw -mavx512vl -mavx512vbmi;
// called only after resolve_sparse_isa found them all.
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "lowbit/sparse_ternary.h"

namespace {

struct V {
  using reg = __m512i;
  static constexpr int kLanes = 32;
  static inline reg load(const std::int16_t* p) { return _mm512_loadu_si512(p); }
  static inline reg zero() { return _mm512_setzero_si512(); }
  static inline reg add(reg a, reg b) { return _mm512_add_epi16(a, b); }
  static inline reg sub(reg a, reg b) { return _mm512_sub_epi16(a, b); }
  // Four vpaddw with memory operands, in assembly: compiled from intrinsics, GCC 12 gives each
  // sum a fresh register and copies all four back on every step of the loop (measured: a
  // third more instructions in the innermost loop of the panel form). The "m" operands tell
  // the compiler which bytes are read.
  static inline void add_pair(reg& a0, reg& a1, reg& b0, reg& b1, const std::int16_t* pp,
                              const std::int16_t* pm) {
    using Row = std::int16_t[2 * kLanes];
    asm("vpaddw %[p0], %[a0], %[a0]\n\t"
        "vpaddw %[p1], %[a1], %[a1]\n\t"
        "vpaddw %[m0], %[b0], %[b0]\n\t"
        "vpaddw %[m1], %[b1], %[b1]"
        : [a0] "+v"(a0), [a1] "+v"(a1), [b0] "+v"(b0), [b1] "+v"(b1)
        : [p0] "m"(*reinterpret_cast<const reg*>(pp)), [p1] "m"(*reinterpret_cast<const reg*>(pp + kLanes)),
          [m0] "m"(*reinterpret_cast<const reg*>(pm)), [m1] "m"(*reinterpret_cast<const reg*>(pm + kLanes)));
    (void)sizeof(Row);
  }
  static inline void flush(reg v, std::int32_t* dst) {
    const __m512i lo = _mm512_cvtepi16_epi32(_mm512_castsi512_si256(v));
    const __m512i hi = _mm512_cvtepi16_epi32(_mm512_extracti64x4_epi64(v, 1));
    _mm512_storeu_si512(dst, _mm512_add_epi32(_mm512_loadu_si512(dst), lo));
    _mm512_storeu_si512(dst + 16, _mm512_add_epi32(_mm512_loadu_si512(dst + 16), hi));
  }
};

#include "lowbit/sparse_ternary_body.h"

// One (row, block)'s pairs at s (pairs <= 255) against the block's 256 bytes t0..t3 (u = x,
// + 128 in signed mode; byte 255, the sentinel's, is 0): sum of u at the plus offsets minus
// sum at the minus ones, as 16 int32 partial sums. 32 pairs (64 offsets) per step: each
// offset looked up by two vpermi2b (its bit 7 picks the half), the steps's tail masked off,
// then vpmaddubsw by (+1, -1) takes each pair's difference and vpmaddwd by 1 widens.
inline __m512i lookup_pairs(const std::uint8_t* s, std::int64_t pairs, __m512i t0, __m512i t1,
                            __m512i t2, __m512i t3) {
  const __m512i sign = _mm512_set1_epi16(static_cast<short>(0xFF01));  // bytes +1, -1
  const __m512i ones = _mm512_set1_epi16(1);
  __m512i sum = _mm512_setzero_si512();
  for (std::int64_t j = 0; j < 2 * pairs; j += 64) {
    const std::int64_t left = 2 * pairs - j;
    const __mmask64 keep = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
    const __m512i i = _mm512_loadu_si512(s + j);  // may run past the pairs: kSparsePad
    const __mmask64 high = _mm512_movepi8_mask(i);
    const __m512i lo = _mm512_maskz_permutex2var_epi8(keep & ~high, t0, i, t1);
    const __m512i hi = _mm512_maskz_permutex2var_epi8(keep & high, t2, i, t3);
    const __m512i diff = _mm512_maddubs_epi16(_mm512_or_si512(lo, hi), sign);
    sum = _mm512_add_epi32(sum, _mm512_madd_epi16(diff, ones));
  }
  return sum;
}

// The gather form: activation row m alone against row groups [g0, g1). u = x (XOR 0x80 in
// signed mode: x + 128) laid out as the panel's rows, 256 bytes per block (byte 255 and those
// past K are 0); out = the lookups' sum - 128 row_sums in signed mode.
void lookup_row(const bayesq::SparseProblem& p, std::int64_t m, std::int64_t g0, std::int64_t g1,
                std::vector<std::uint8_t>& u) {
  const std::int64_t k = p.w.k, blocks = bayesq::sparse_blocks(k), n_out = p.w.rows;
  const std::uint8_t flip = p.is_signed ? 0x80 : 0x00;
  for (std::int64_t t = 0; t < k; ++t)
    u[(t / bayesq::kSparseBlock) * kBlockRows + t % bayesq::kSparseBlock] = p.x[m * k + t] ^ flip;
  alignas(64) __m512i acc[kRows];
  for (std::int64_t g = g0; g < g1; ++g) {
    for (std::int64_t r = 0; r < kRows; ++r) acc[r] = _mm512_setzero_si512();
    const std::uint8_t* s = p.w.offsets + p.w.starts[g];
    const std::uint8_t* end = p.w.offsets + p.w.starts[g + 1];
    const std::uint8_t* c = p.w.counts + g * blocks * kRows;
    for (std::int64_t b = 0; b < blocks; ++b, c += kRows) {
      const std::uint8_t* tb = u.data() + b * kBlockRows;
      const __m512i t0 = _mm512_loadu_si512(tb), t1 = _mm512_loadu_si512(tb + 64);
      const __m512i t2 = _mm512_loadu_si512(tb + 128), t3 = _mm512_loadu_si512(tb + 192);
      for (std::int64_t r = 0; r < kRows; ++r) {
        const std::int64_t pairs = c[r];
        if (pairs == 0) continue;
        bayesq::sparse_check_pairs(pairs, s, end);
        acc[r] = _mm512_add_epi32(acc[r], lookup_pairs(s, pairs, t0, t1, t2, t3));
        s += 2 * pairs;
      }
    }
    const std::int64_t rows = std::min(kRows, n_out - g * kRows);
    for (std::int64_t r = 0; r < rows; ++r) {
      const std::int64_t n = g * kRows + r;
      // mod 2^32: the true sum fits int32
      const std::uint32_t y = static_cast<std::uint32_t>(_mm512_reduce_add_epi32(acc[r])) -
                              (p.is_signed ? 128u * static_cast<std::uint32_t>(p.w.row_sums[n]) : 0u);
      p.out[m * n_out + n] = static_cast<std::int32_t>(y);
    }
  }
}

}  // namespace

namespace bayesq {

std::int64_t sparse_tile_rows_avx512() { return kMT; }

void sparse_panel_avx512(const SparseProblem& p, std::int64_t u0, std::int64_t u1) {
  build_panel(p, u0, u1);
}

void sparse_rect_avx512(const SparseProblem& p, std::int64_t m0, std::int64_t m1,
                        std::int64_t g0, std::int64_t g1) {
  if (p.panel != nullptr) {
    panel_rect(p, m0, m1, g0, g1);
    return;
  }
  std::vector<std::uint8_t> u(static_cast<std::size_t>(sparse_padded_k(p.w.k)), 0);
  for (std::int64_t m = m0; m < m1; ++m) lookup_row(p, m, g0, g1, u);
}

}  // namespace bayesq
