// bayesq C++ core: shared types. Torch-free; plain buffers in and out.
#ifndef BAYESQ_COMMON_H_
#define BAYESQ_COMMON_H_

#include <cstddef>
#include <cstdint>

namespace bayesq {

// One packed word of a bit plane: 64 consecutive positions along the reduction axis K.
// Bit k of word w holds position 64 * w + k. Padding bits past K are always zero.
typedef std::uint64_t word_t;
constexpr int kWordBits = 64;

struct CpuFeatures {
  bool avx2 = false;
  bool avx512f = false;
  bool avx512vpopcntdq = false;
  // For the 8-bit dot products of the ternary GEMM (csrc/lowbit/): AVX-512 BW / VL / VNNI
  // (vpdpbusd on zmm) and AVX-VNNI (the VEX vpdpbusd on ymm). No other kernel looks at them.
  bool avx512bw = false;
  bool avx512vl = false;
  bool avx512vnni = false;
  bool avxvnni = false;
};

// Detected once, on first use; never depends on how the module was compiled.
const CpuFeatures& cpu_features();

// The instruction-set variant a kernel runs. resolve_isa(nullptr) is the best the CPU supports;
// a name ("portable", "avx2", "avx512") forces one (for tests) and throws std::invalid_argument
// if unknown or if the CPU lacks it.
enum class Isa { kPortable, kAvx2, kAvx512 };
Isa resolve_isa(const char* name);

// Total number of set bits in words[0 .. n). Reference: a byte loop; fast path: the builtin.
std::int64_t popcount_words(const word_t* words, std::size_t n);

}  // namespace bayesq

#endif  // BAYESQ_COMMON_H_
