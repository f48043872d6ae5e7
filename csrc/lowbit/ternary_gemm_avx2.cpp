// The ternary x u8 GEMM on plain AVX2 (no VNNI: Haswell .. Zen 3), vpmaddubsw with int16
// accumulation (ternary_gemm_body_int16.h). Compiled with -mavx2 only; called only after
// resolve_ternary_isa found AVX2.
#include <immintrin.h>

#include <cstdint>

#include "common/add_i16.h"
#include "lowbit/ternary_gemm.h"

namespace {

#include "lowbit/ternary_gemm_body_int16.h"

}  // namespace

namespace bayesq {

void ternary_rect_avx2(const TernaryProblem& p, std::int64_t m0, std::int64_t m1,
                       std::int64_t n0, std::int64_t n1) {
  // 3 x 3 tiles: 9 int16 accumulators + 3 expanded weight vectors + 1 activation vector + 1
  // product + the mask: 15 of the 16 ymm registers, no spill. Per vector step 9 vpmaddubsw,
  // 9 vpaddw and 3 (shift, and) expansions: 24 vector ops on Zen 3's four pipes, 6 cycles for
  // 9 x 32 products (the two multiply pipes alone would take 4.5). Measured against 4 x 2,
  // 5 x 2, 2 x 4, 6 x 1, 8 x 1 and 6 x 2 (which spills): 3 x 3 and 5 x 2 led, within noise.
  // Single activation rows take 1 x 4 tiles.
  ternary_rect_body<3, 3, 4>(p, m0, m1, n0, n1);
}

}  // namespace bayesq
