// The AVX-512 VNNI kernel with the codes expanded by GFNI: one vgf2p8affineqb per 64 weights
// moves bits 2q, 2q + 1 of every byte to bits 0, 1 and clears the rest, where the plain kernel
// spends a shift and a mask (on the ports the vpdpbusd need). Compiled with the flags of
// ternary_gemm_avx512vnni.cpp plus -mgfni; isa "avx512vnni_gfni" (the default when the CPU has it).
#include <immintrin.h>

#include <cstdint>

#include "lowbit/ternary_gemm.h"

namespace {

struct V {
  using reg = __m512i;
  static constexpr int kBytes = 64;
  static inline reg load(const std::uint8_t* p) { return _mm512_loadu_si512(p); }
  static inline reg zero() { return _mm512_setzero_si512(); }
  // Output bit i of a byte is the parity of (matrix byte 7 - i) AND (input byte): byte 7 picks
  // input bit 2q for output bit 0, byte 6 input bit 2q + 1 for output bit 1; the others are 0.
  static inline reg expand(reg v, int q) {
    const std::uint64_t pick = (std::uint64_t(1) << (2 * q) << 56) |
                               (std::uint64_t(1) << (2 * q + 1) << 48);
    return _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(static_cast<long long>(pick)), 0);
  }
  static inline reg dot(reg acc, reg u, reg s) { return _mm512_dpbusd_epi32(acc, u, s); }
  static inline std::uint32_t reduce(reg v) {
    return static_cast<std::uint32_t>(_mm512_reduce_add_epi32(v));
  }
};

#include "lowbit/ternary_gemm_body.h"

}  // namespace

namespace bayesq {

void ternary_rect_avx512vnni_gfni(const TernaryProblem& p, std::int64_t m0, std::int64_t m1,
                                  std::int64_t n0, std::int64_t n1) {
  ternary_rect_body<4, 4, 8>(p, m0, m1, n0, n1);
}

}  // namespace bayesq
