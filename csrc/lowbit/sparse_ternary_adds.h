// The innermost adds of the sparse ternary GEMM's panel form, shared by its AVX2 (ymm) and
// AVX-512 (zmm) files: Reg is the file's vector type, kLanes its int16 lanes.
//
// Four (two) vpaddw with memory operands, in assembly: compiled from intrinsics, GCC 12 gives
// each sum a fresh register and copies all four back on every step of the loop (measured: a
// third more instructions in the innermost loop of the panel form). The "m" operands tell the
// compiler which bytes are read; the assembler takes the width from the registers.
#ifndef BAYESQ_SPARSE_TERNARY_ADDS_H_
#define BAYESQ_SPARSE_TERNARY_ADDS_H_

#include <cstdint>

namespace bayesq {

// a0 += pp[0, kLanes), a1 += pp[kLanes, 2 kLanes), b0 += pm[0, kLanes), b1 += pm[kLanes, ...)
template <typename Reg, int kLanes>
inline void sparse_add_pair(Reg& a0, Reg& a1, Reg& b0, Reg& b1, const std::int16_t* pp,
                            const std::int16_t* pm) {
  asm("vpaddw %[p0], %[a0], %[a0]\n\t"
      "vpaddw %[p1], %[a1], %[a1]\n\t"
      "vpaddw %[m0], %[b0], %[b0]\n\t"
      "vpaddw %[m1], %[b1], %[b1]"
      : [a0] "+v"(a0), [a1] "+v"(a1), [b0] "+v"(b0), [b1] "+v"(b1)
      : [p0] "m"(*reinterpret_cast<const Reg*>(pp)),
        [p1] "m"(*reinterpret_cast<const Reg*>(pp + kLanes)),
        [m0] "m"(*reinterpret_cast<const Reg*>(pm)),
        [m1] "m"(*reinterpret_cast<const Reg*>(pm + kLanes)));
}

// a0 += pp[0, kLanes), b0 += pm[0, kLanes)
template <typename Reg>
inline void sparse_add_pair1(Reg& a0, Reg& b0, const std::int16_t* pp, const std::int16_t* pm) {
  asm("vpaddw %[p0], %[a0], %[a0]\n\t"
      "vpaddw %[m0], %[b0], %[b0]"
      : [a0] "+v"(a0), [b0] "+v"(b0)
      : [p0] "m"(*reinterpret_cast<const Reg*>(pp)), [m0] "m"(*reinterpret_cast<const Reg*>(pm)));
}

}  // namespace bayesq

#endif  // BAYESQ_SPARSE_TERNARY_ADDS_H_
