// The activation quantizer's loop, shared by the ISA variants of quantize_rows_* (included once
// by bitpack.cpp, bitpack_avx2.cpp and bitpack_avx512.cpp, each compiled with its own -m flags so
// the loop vectorizes to their width). Not a public header. See quantize_pack_bit_planes in
// bitpack.h for the rule.
//
// Rounding: after clamping v = x / s to the integer range [lo, hi], (v + 1.5 * 2^23) - 1.5 * 2^23
// is v rounded half to even in the default rounding mode (|v| <= 255 << 2^22, so the sum's unit in
// the last place is 1): the same result as rint / torch.round, without a libm call per element,
// and clamping before rounding equals clamping after because lo and hi are integers. Built without
// -ffast-math, so the compiler keeps the two additions.

#include <cstdint>

#include "bitserial/bitpack.h"

namespace bayesq {
namespace {

// Codes are stored as bytes (a negative code as its two's-complement byte); sums and counts run
// in int32 over blocks of 2^20 positions (2^20 * 255 < 2^31), which keeps the loop in one
// integer width so that it vectorizes. Not inlined: GCC 12 fails to vectorize the copy where
// lo = 0 is a known constant (and falls back to a branchy scalar loop), so the loop is compiled
// once, for any lo and hi.
__attribute__((noinline)) void quantize_row_uniform(const float* __restrict x, float scale,
                                               std::int64_t k, float lo, float hi,
                                               std::uint8_t* __restrict codes, std::int64_t& sum,
                                               std::int64_t& bad) {
  constexpr float kRound = 12582912.0f;  // 1.5 * 2^23
  constexpr std::int64_t kBlock = std::int64_t{1} << 20;
  std::int64_t total = 0;
  for (std::int64_t b0 = 0; b0 < k; b0 += kBlock) {
    const std::int64_t b1 = b0 + kBlock < k ? b0 + kBlock : k;
    std::int32_t s = 0, nonfinite = 0;
    for (std::int64_t t = b0; t < b1; ++t) {
      const float v = x[t] / scale;
      nonfinite += !(x[t] - x[t] == 0.0f);  // NaN or +-inf
      const float c = v >= lo ? (v <= hi ? v : hi) : lo;  // NaN -> lo: no UB in the cast
      const std::int32_t q = static_cast<std::int32_t>((c + kRound) - kRound);
      codes[t] = static_cast<std::uint8_t>(q);
      s += q;
    }
    total += s;
    bad += nonfinite;
  }
  sum = total;
}

BAYESQ_ALWAYS_INLINE void quantize_row_sign(const float* __restrict x, std::int64_t k,
                                            std::int8_t* __restrict codes, std::int64_t& sum,
                                            std::int64_t& bad) {
  std::int64_t s = 0;
  std::int32_t nonfinite = 0;
  for (std::int64_t t = 0; t < k; ++t) {
    nonfinite += !(x[t] - x[t] == 0.0f);
    const std::int8_t q = x[t] >= 0.0f ? 1 : -1;
    codes[t] = q;
    s += q;
  }
  sum = s;
  bad += nonfinite;
}

// Codes of rows [r0, r1) of x into codes ((r1 - r0) x k bytes), their sums into row_sums[r0..r1),
// the count of non-finite inputs added to bad.
BAYESQ_ALWAYS_INLINE void quantize_rows_body(const float* x, const float* scale,
                                             std::int64_t scale_stride, std::int64_t r0,
                                             std::int64_t r1, std::int64_t k, int bits,
                                             CodeMode mode, std::uint8_t* codes,
                                             std::int64_t* row_sums, std::int64_t& bad) {
  for (std::int64_t r = r0; r < r1; ++r) {
    const float* row = x + r * k;
    std::uint8_t* out = codes + (r - r0) * k;
    if (mode == CodeMode::kPlusMinusOne) {
      quantize_row_sign(row, k, reinterpret_cast<std::int8_t*>(out), row_sums[r], bad);
    } else if (mode == CodeMode::kUnsigned) {
      quantize_row_uniform(row, scale[r * scale_stride], k, 0.0f,
                           static_cast<float>((1 << bits) - 1), out, row_sums[r], bad);
    } else {
      quantize_row_uniform(row, scale[r * scale_stride], k,
                           -static_cast<float>(1 << (bits - 1)),
                           static_cast<float>((1 << (bits - 1)) - 1), out, row_sums[r], bad);
    }
  }
}

}  // namespace
}  // namespace bayesq
