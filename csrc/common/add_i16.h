// acc += v in 16-bit lanes, in place, for the AVX2 kernels that sum vpmaddubsw products in int16
// (lowbit/ternary_gemm_body_int16.h, runner/direct_gemm_avx2.cpp). Include only from a file
// compiled with -mavx2.
//
// In assembly on purpose: from _mm256_add_epi16, GCC 12 either reassociates a tile's adds into
// trees of partial sums that need more registers than there are (half the ternary tile spilled
// to the stack: 138 against 163 GOP/s at N = K = 4096, batch 64, Zen 3) or gives each sum a new
// register and copies it back every iteration (8 vmovdqa per 8 products in the direct GEMM's
// 4 x 2 tile). Opaque to the compiler, each add stays one vpaddw into the sum's own register.
#ifndef BAYESQ_ADD_I16_H_
#define BAYESQ_ADD_I16_H_

#include <immintrin.h>

namespace bayesq {

inline __attribute__((always_inline)) void add_i16(__m256i& acc, __m256i v) {
  asm("vpaddw %[v], %[acc], %[acc]" : [acc] "+x"(acc) : [v] "x"(v));
}

}  // namespace bayesq

#endif  // BAYESQ_ADD_I16_H_
