// The "direct" GEMM of the whole-net runner: 8-bit activation codes x signed weight codes of any
// width up to 8 bits, for the layers the ternary 2-bit kernel (lowbit/ternary_gemm.h) serves
// badly: a small K (LeNet-5's first convolution has K = 25, which the ternary kernel pads to 256)
// or few outputs (a classifier's 10 rows), and weights wider than ternary.
//
//   out[m, n] = ((float(acc[m, n]) * row_scale[n]) * act_scale) + bias[n],
//   acc[m, n] = sum_{k<K} x[m, k] w[n, k]          (exact, int32)
//
// with x unsigned (u8, 0..255) or signed (s8) codes and w in -128..127. The AVX-512 VNNI path
// broadcasts four consecutive activation bytes of a row to every int32 lane and multiplies them
// with four consecutive weights of 16 output rows (`vpdpbusd`, u8 x s8 into int32): the weights
// are stored in that order (DirectWeights), so a register tile of up to 4 activation rows x 64
// outputs runs K / 4 steps of 4 loads and 16 dot products, with no padding of K beyond a multiple
// of 4 and no per-plane work. Signed activations enter as u = x + 128 (x XOR 0x80) and the
// products are corrected by 128 * sum_k w[n, k]; the int32 sums wrap, so the result is exact
// whenever the true product fits int32 (which bayesq.runtime checks for every layer). The
// scaling is the reference's float32 operations in its order (no fused multiply-add).
// On a CPU without VNNI the AVX2 path (direct_gemm_avx2.cpp) does the same with vpmaddubsw, its
// products summed in int16 for as long as they cannot overflow (direct_avx2_steps).
#ifndef BAYESQ_DIRECT_GEMM_H_
#define BAYESQ_DIRECT_GEMM_H_

#include <cstdint>
#include <vector>

namespace bayesq {

constexpr std::int64_t kDirectLanes = 16;  // output rows per 512-bit vector of int32

// K rounded up to whole groups of 4 (the bytes one int32 lane multiplies).
inline std::int64_t direct_padded_k(std::int64_t k) { return (k + 3) / 4 * 4; }

// Weight codes (n x k) in the order the kernel reads them: chunks of 16 output rows; in chunk c,
// group g (weights 4g .. 4g + 3) of row 16c + j at bytes (c * groups + g) * 64 + 4j. Padding rows
// and positions hold 0.
// The AMX path's copy (DirectAmxWeights) has the same order with groups padded to whole tiles of
// 16 (K to a multiple of 64) and chunks to an even number (blocks of 32 outputs).
// The packed bytes start 64-byte aligned (a 64-byte weight row is one cache line, not two), at
// `align` bytes into the buffer; the weights can be moved, not copied (a copy's buffer could sit
// at another alignment).
struct DirectAmxWeights {
  std::int64_t n = 0, k = 0;
  std::int64_t groups = 0;  // the padded K / 4
  std::int64_t chunks = 0;  // the padded ceil(n / 16)
  std::vector<std::int8_t> packed;     // align + chunks * groups * 64 bytes
  std::int64_t align = 0;
  std::vector<std::int32_t> corr;      // chunks * 16: 128 * sum_k w[n, k] (the signed correction)
  const std::int8_t* data() const { return packed.data() + align; }
  DirectAmxWeights() = default;
  DirectAmxWeights(DirectAmxWeights&&) = default;
  DirectAmxWeights& operator=(DirectAmxWeights&&) = default;
  DirectAmxWeights(const DirectAmxWeights&) = delete;
  DirectAmxWeights& operator=(const DirectAmxWeights&) = delete;
};
struct DirectWeights : DirectAmxWeights {
  DirectAmxWeights amx;  // empty unless the CPU runs the AMX path
  std::int32_t max_abs = 0;  // the largest |w[n, k]| (what bounds the AVX2 path's int16 sums)
};

// Packs codes (n x k, row-major), and their AMX copy when direct_amx_available(). Throws
// std::invalid_argument on n < 1 or k < 1.
DirectWeights pack_direct(const std::int8_t* codes, std::int64_t n, std::int64_t k);

// The layer's scaling, borrowed (n entries each).
struct DirectEpilogue {
  const float* row_scale = nullptr;
  const float* bias = nullptr;
  float act_scale = 1.0f;
};

// out (m x w.n floats, row-major) from x (m rows of x_stride >= direct_padded_k(w.k) bytes, the
// bytes k .. padded k of each row 0). portable = the slow obvious reference (int32 dot products,
// then the same float32 scaling); else the AVX-512 VNNI path (direct_gemm_available()). Up to
// num_threads threads of the pool share the rows.
//
// pool4: the rows come in windows of 4 (a 2 x 2 max pooling after a convolution, the im2col rows
// of each window adjacent), and out gets one row per window (m / 4 rows, m a multiple of 4): the
// largest of the 4 scaled values. Taken on the integers before the scaling, which is exact: the
// scaling is a chain of float32 operations each monotone in its input, nondecreasing where
// row_scale >= 0 (the window's largest integer gives the largest value) and nonincreasing where
// row_scale < 0 (the smallest integer does).
// act_max: the largest unsigned byte u the kernels can meet (u = x, or x + 128 for signed codes;
// direct_act_max), which the AVX2 path's int16 sums depend on.
// path: kBest (AMX from kDirectAmxMinRows rows and kDirectAmxMinK columns on where the CPU runs
// it, else VNNI, else AVX2 where direct_avx2_steps >= 1, else the portable reference), or one
// forced; a forced path the CPU lacks, or AVX2 where its sums could saturate, throws
// std::invalid_argument.
enum class DirectPath { kBest, kPortable, kAvx2, kVnni, kAmx };
void direct_gemm(const std::uint8_t* x, std::int64_t m, std::int64_t x_stride, bool is_signed,
                 const DirectWeights& w, const DirectEpilogue& e, float* out, DirectPath path,
                 int num_threads, bool pool4 = false, int act_max = 255);

// The largest u the kernels meet for activation codes of `bits` bits (1..8): 2^bits - 1 when
// unsigned; for signed codes u = x + 128 <= 127 + 2^(bits - 1).
inline int direct_act_max(int bits, bool is_signed) {
  return is_signed ? 127 + (1 << (bits - 1)) : (1 << bits) - 1;
}
// How many groups of 4 products the AVX2 path may sum in int16: each vpmaddubsw pair is at most
// 2 * act_max * max_abs in size and must not saturate, nor may `steps` of them overflow int16.
// 0: the path would not be exact (8-bit activations with weights beyond -64..64).
inline std::int64_t direct_avx2_steps(int act_max, std::int32_t max_abs) {
  const std::int64_t pair = 2 * std::int64_t{act_max} * (max_abs > 0 ? max_abs : 1);
  return pair > 32767 ? 0 : 32767 / pair;
}
// True when the CPU runs the AVX2 path.
bool direct_avx2_available();

// The AMX path of direct_gemm (it takes it by itself from kDirectAmxMinRows rows on).
void direct_gemm_amx(const std::uint8_t* x, std::int64_t m, std::int64_t x_stride,
                     bool is_signed, const DirectWeights& w, const DirectEpilogue& e, float* out,
                     int num_threads, bool pool4);

// True when the CPU runs the AVX-512 VNNI path (AVX-512 F, BW, VL and VNNI).
bool direct_gemm_available();
// True when the AMX path runs: AMX-TILE and AMX-INT8 in CPUID, the tile state enabled by the OS
// (XCR0), the VNNI path's AVX-512 for the epilogue, and Linux's permission for this process to
// use the tile data (arch_prctl ARCH_REQ_XCOMP_PERM, asked for once).
bool direct_amx_available();
// From this many rows on the AMX path takes the product, when K is at least kDirectAmxMinK (a
// smaller K is padded to 64 on the tiles). Below it the tiles' fixed costs (the rows copied into
// tile order, the tile configuration) weigh more than they save: LeNet-5's second convolution at
// batch 1 (64 rows) ran slower on AMX (batch 1: 0.046 ms against 0.039 with 128 here, 2 threads;
// batch 256 unchanged, 4.15 ms; with 256 here batch 256 lost: 4.48 ms).
constexpr std::int64_t kDirectAmxMinRows = 128;
constexpr std::int64_t kDirectAmxMinK = 128;

// The AVX-512 VNNI rows [m0, m1) (direct_gemm_avx512vnni.cpp); with pool4, m0 and m1 are
// multiples of 4 and out row m / 4 gets window m.
void direct_rows_avx512vnni(const std::uint8_t* x, std::int64_t m0, std::int64_t m1,
                            std::int64_t x_stride, bool is_signed, const DirectWeights& w,
                            const DirectEpilogue& e, float* out, bool pool4);
// The AVX2 rows [m0, m1) (direct_gemm_avx2.cpp), `steps` = direct_avx2_steps(...) >= 1.
void direct_rows_avx2(const std::uint8_t* x, std::int64_t m0, std::int64_t m1,
                      std::int64_t x_stride, bool is_signed, const DirectWeights& w,
                      const DirectEpilogue& e, float* out, bool pool4, std::int64_t steps);
// The AMX rows [m0, m1) (direct_gemm_amx.cpp): x rows x_stride apart (a multiple of 64, at
// least w.groups * 4 bytes), in whole blocks of 32 rows from m0 (rows past m1 are read, not
// stored), activations as u8 (signed codes already offset: x + 128).
void direct_rows_amx(const std::uint8_t* x, std::int64_t m0, std::int64_t m1,
                     std::int64_t x_stride, bool is_signed, const DirectAmxWeights& w,
                     const DirectEpilogue& e, float* out, bool pool4);

}  // namespace bayesq

#endif  // BAYESQ_DIRECT_GEMM_H_
