// Bit-plane packing of integer codes for the bit-serial GEMM (csrc/bitserial/bitserial_gemm.h).
//
// A matrix of codes x (rows x k) is stored as bit planes: row r has bits[r] planes (0..8), plane
// j of row r holding bit j of every code of that row, packed along k into 64-bit words. The value
// of a code is recovered from its bits x_j as
//   x = sum_j c_j x_j + beta
// with, for a row of b planes,
//   kUnsigned:     c_j = 2^j,                          beta = 0   (codes 0 .. 2^b - 1)
//   kSigned:       c_j = 2^j, c_{b-1} = -2^(b-1),      beta = 0   (two's complement, -2^(b-1) .. 2^(b-1) - 1)
//   kPlusMinusOne: one plane, bit 1 = +1, bit 0 = -1, c_0 = 2, beta = -1
// and a row of 0 planes (a pruned row) has every code 0, whatever the mode.
//
// Layout (the invariants every kernel relies on):
//   * Plane rows are stored one after another: row r's planes are plane rows
//     plane_offsets[r] .. plane_offsets[r + 1] - 1, least significant plane first.
//     plane_offsets[0] = 0, plane_offsets[rows] = P, the number of real plane rows.
//   * Every plane row is words_per_plane(k) words: k rounded up to a multiple of kPlaneWordAlign
//     words (512 bits, one AVX-512 register), so a kernel steps through a plane row in whole
//     512-bit chunks and never needs a tail. Bit t of word w holds position 64 w + t; every bit at
//     a position >= k is zero (so AND and XOR of two planes have no bits there).
//   * After the last real plane row there are kPlaneRowPad more plane rows, all zero: a register
//     tile may read up to kPlaneRowPad plane rows past the last real one (its results there are
//     discarded). The planes buffer therefore holds (P + kPlaneRowPad) * words_per_plane words.
#ifndef BAYESQ_BITPACK_H_
#define BAYESQ_BITPACK_H_

#include <cstddef>
#include <cstdint>

#include "common/bayesq_common.h"

// Inline helpers in these headers are also compiled inside the AVX2 / AVX-512 files; forcing
// them inline keeps an ISA-specific copy from becoming the one the linker keeps for all callers.
#define BAYESQ_ALWAYS_INLINE inline __attribute__((always_inline))

namespace bayesq {

enum class CodeMode : int { kUnsigned = 0, kSigned = 1, kPlusMinusOne = 2 };

constexpr std::int64_t kPlaneWordAlign = 8;  // words per 512-bit chunk
constexpr std::int64_t kPlaneRowPad = 8;     // zero plane rows after the last real one
constexpr int kMaxPlanes = 8;
constexpr std::int64_t kMaxK = std::int64_t{1} << 40;  // far beyond memory; keeps sizes in int64


BAYESQ_ALWAYS_INLINE std::int64_t words_per_plane(std::int64_t k) {
  const std::int64_t chunk_bits = kPlaneWordAlign * kWordBits;
  return (k + chunk_bits - 1) / chunk_bits * kPlaneWordAlign;
}

// A read-only view of a packed matrix. Owned by the caller (the Python side holds the arrays).
struct BitPlanesView {
  const word_t* planes = nullptr;             // (plane_offsets[rows] + kPlaneRowPad) * words
  const std::int64_t* plane_offsets = nullptr;  // rows + 1 entries
  const std::int64_t* row_sums = nullptr;       // rows entries: sum of the row's code values
  std::int64_t rows = 0;
  std::int64_t k = 0;
  std::int64_t words = 0;  // words per plane row, words_per_plane(k)
  CodeMode mode = CodeMode::kUnsigned;

  BAYESQ_ALWAYS_INLINE std::int64_t plane_rows() const { return plane_offsets[rows]; }
  BAYESQ_ALWAYS_INLINE int bits(std::int64_t r) const {
    return static_cast<int>(plane_offsets[r + 1] - plane_offsets[r]);
  }
  BAYESQ_ALWAYS_INLINE const word_t* plane(std::int64_t p) const { return planes + p * words; }
};

// Throws std::invalid_argument unless the view is a layout the kernels can read safely:
// rows >= 0, 1 <= k <= kMaxK, words == words_per_plane(k), plane_offsets starting at 0 and rising by 0..8
// per row (exactly 0 or 1 for kPlusMinusOne), planes_size (in words) covering the real plane
// rows plus the padding rows. `what` names the matrix in the message.
void check_layout(const BitPlanesView& v, std::int64_t planes_size, const char* what);

// The largest |code| the view's row widths and mode allow: 2^b - 1 (unsigned), 2^(b-1) (signed)
// or 1 (+-1) for the widest row's b planes, 0 when every row is pruned. O(rows); the layout must
// have passed check_layout. k * max_abs_code(a) * max_abs_code(w) <= 2^31 - 1 is what makes
// the GEMM's int32 result exact.
std::int64_t max_abs_code(const BitPlanesView& v);

// The coefficient c_j of plane j of a row of `bits` planes, and the row's offset beta.
BAYESQ_ALWAYS_INLINE std::int32_t plane_coefficient(CodeMode mode, int bits, int j) {
  if (mode == CodeMode::kPlusMinusOne) return 2;
  const std::int32_t c = std::int32_t{1} << j;
  return (mode == CodeMode::kSigned && j == bits - 1) ? -c : c;
}
BAYESQ_ALWAYS_INLINE std::int32_t row_offset(CodeMode mode, int bits) {
  return (mode == CodeMode::kPlusMinusOne && bits > 0) ? -1 : 0;
}

// Packs codes (rows x k bytes, row-major, contiguous; int8 bit patterns for kSigned and
// kPlusMinusOne, uint8 for kUnsigned) into `planes` (the whole buffer, padding rows included,
// every word written) and the row sums of the code values into row_sums. plane_offsets gives each
// row's width as above; the layout must pass check_layout. Returns the number of codes that lie
// outside their row's range (then planes and sums are unspecified and must not be used).
// isa: nullptr for the best the CPU has, or "portable" / "avx2" / "avx512" to force one.
std::int64_t pack_bit_planes(const std::uint8_t* codes, const std::int64_t* plane_offsets,
                             std::int64_t rows, std::int64_t k, CodeMode mode, word_t* planes,
                             std::int64_t* row_sums, const char* isa = nullptr);

// Quantizes float activations x (rows x k, row-major, contiguous) and packs them, `bits` planes
// per row, in one pass (no codes array in between):
//   kUnsigned:     code = clamp(round(x / scale), 0, 2^bits - 1)      (the clamp at 0 is a ReLU)
//   kSigned:       code = clamp(round(x / scale), -2^(bits-1), 2^(bits-1) - 1)
//   kPlusMinusOne: code = x >= 0 ? +1 : -1                             (bits = 1, scale unused)
// round is half to even (as torch.round). scale[r * scale_stride] is row r's scale: stride 0 for
// one scale, 1 for one per row; every scale finite and > 0 (checked by the caller). Writes the
// whole planes buffer (rows * bits + kPlaneRowPad plane rows of words_per_plane(k) words) and
// row_sums. Returns the number of non-finite entries of x (then the output must not be used).
// Up to num_threads threads of the pool (thread_pool.h) share the rows.
std::int64_t quantize_pack_bit_planes(const float* x, const float* scale,
                                      std::int64_t scale_stride, std::int64_t rows,
                                      std::int64_t k, int bits, CodeMode mode, word_t* planes,
                                      std::int64_t* row_sums, const char* isa = nullptr,
                                      int num_threads = 1);

// The inverse: codes (rows x k bytes) from the planes; int8 bit patterns except for kUnsigned.
void unpack_bit_planes(const BitPlanesView& v, std::uint8_t* codes);

// Writes the planes of rows [row_begin, row_end) (their real plane rows only) from codes that
// have already passed the range check. One variant per ISA, selected by pack_bit_planes.
#define BAYESQ_DECLARE_PACK_VARIANT(isa)                                                     \
  void pack_rows_##isa(const std::uint8_t* codes, const std::int64_t* plane_offsets,      \
                       std::int64_t row_begin, std::int64_t row_end, std::int64_t k,      \
                       CodeMode mode, word_t* planes);
BAYESQ_DECLARE_PACK_VARIANT(portable)
BAYESQ_DECLARE_PACK_VARIANT(avx2)
BAYESQ_DECLARE_PACK_VARIANT(avx512)
#undef BAYESQ_DECLARE_PACK_VARIANT

// The quantizer of quantize_pack_bit_planes for rows [r0, r1): codes into `codes`
// ((r1 - r0) x k bytes), sums into row_sums[r0 .. r1), non-finite inputs counted into bad.
#define BAYESQ_DECLARE_QUANTIZE_VARIANT(isa)                                                   \
  void quantize_rows_##isa(const float* x, const float* scale, std::int64_t scale_stride,     \
                           std::int64_t r0, std::int64_t r1, std::int64_t k, int bits,         \
                           CodeMode mode, std::uint8_t* codes, std::int64_t* row_sums,          \
                           std::int64_t& bad);
BAYESQ_DECLARE_QUANTIZE_VARIANT(portable)
BAYESQ_DECLARE_QUANTIZE_VARIANT(avx2)
BAYESQ_DECLARE_QUANTIZE_VARIANT(avx512)
#undef BAYESQ_DECLARE_QUANTIZE_VARIANT

// The bitserial kernels' own ISA choice: their AVX-512 path needs AVX-512F, BW, VL and VPOPCNTDQ
// (resolve_isa only knows AVX-512F), so with isa == nullptr a CPU without VPOPCNTDQ takes AVX2,
// and a forced "avx512" on such a CPU throws std::invalid_argument.
Isa resolve_bitserial_isa(const char* isa);

}  // namespace bayesq

#endif  // BAYESQ_BITPACK_H_
