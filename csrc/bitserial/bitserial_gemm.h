// Bit-serial GEMM on bit planes (csrc/bitserial/bitpack.h): y = A W^T for an activation matrix A (n x k)
// and a weight matrix W (m x k), both packed, each row with its own number of planes.
//
// With a = sum_i c_i a_i + beta_a and w = sum_j d_j w_j + beta_w (bitpack.h gives c, d, beta):
//   a . w = sum_{i,j} c_i d_j popcount(a_i AND w_j)
//           + beta_w sum_t (a_t - beta_a) + beta_a sum_t (w_t - beta_w) + k beta_a beta_w,
// where c_i d_j = s_ij 2^(i+j), s_ij = -1 when exactly one of the planes is the most significant
// plane of a two's-complement operand. When both operands are {-1,+1}, the XOR form is used:
//   a . w = k - 2 popcount(a XOR w).
// All of it is accumulated in 32-bit integers with wrap-around (unsigned arithmetic): the result
// is exact whenever the true a . w fits in int32, whatever the partial sums did on the way.
// The float output is then y[n, m] = float(acc) * row_scale[m] * act_scale[n] + bias[m].
#ifndef BAYESQ_BITSERIAL_GEMM_H_
#define BAYESQ_BITSERIAL_GEMM_H_

#include <cstdint>
#include <vector>

#include "bitserial/bitpack.h"

namespace bayesq {

// Exactly one of out_int, out is set; both are n x m, row-major, contiguous.
struct GemmOutput {
  std::int32_t* out_int = nullptr;
  float* out = nullptr;
  const float* row_scale = nullptr;  // m entries (required with out)
  const float* act_scale = nullptr;  // n entries (required with out)
  const float* bias = nullptr;       // m entries, or nullptr for none
};

// What the GEMM derives from the weights alone (see GemmProblem): the coefficient of every
// weight plane row and the two per-row factors w_v, w_t of the additive term, for the AND or the
// XOR form. A caller that multiplies by the same weights many times (BitserialLinear) builds it
// once; at batch 1 rebuilding it per call costs as much as a tenth of the product.
struct WeightTerms {
  bool use_xor = false;
  std::vector<std::int32_t> coef;  // per weight plane row
  std::vector<std::uint32_t> v, t;  // per weight row
};
bool uses_xor_form(CodeMode act_mode, CodeMode weight_mode);  // both {-1, +1}
WeightTerms weight_terms(const BitPlanesView& w, bool use_xor);

// act and w must pass check_layout and share k. isa: nullptr for the best the CPU has, or
// "portable" / "avx2" / "avx512" (throws std::invalid_argument if unknown or unsupported).
// num_threads: at most this many threads (the caller's and the pool's, thread_pool.h) share
// the work. terms: nullptr, or weight_terms(w, uses_xor_form(act.mode, w.mode)).
void bitserial_gemm(const BitPlanesView& act, const BitPlanesView& w, const GemmOutput& out,
                    const char* isa = nullptr, int num_threads = 1,
                    const WeightTerms* terms = nullptr);

// What the kernels of one ISA see: the two views, a coefficient per plane row
// (c_i or d_j as above; for the XOR form 1 for activations and -2 for weights), and the additive
// term of each output, factored as init[n, m] = a_u[n] w_v[m] + a_s[n] w_t[m] (mod 2^32):
//   AND form: a_u = k ba + sa, w_v = bw, a_s = ba, w_t = sw, which is
//             k ba bw + bw sa + ba sw (ba, bw the rows' beta; sa, sw their sums of code - beta);
//   XOR form: a_u = k if the activation row has planes, w_v = 1 if the weight row has; a_s = w_t = 0.
struct GemmProblem {
  BitPlanesView a, w;
  bool use_xor = false;
  const std::int32_t* a_coef = nullptr;  // per activation plane row: its coefficient
  const std::int32_t* w_coef = nullptr;  // per weight plane row
  const std::uint32_t* a_u = nullptr;  // per activation row
  const std::uint32_t* a_s = nullptr;
  const std::uint32_t* w_v = nullptr;  // per weight row
  const std::uint32_t* w_t = nullptr;
  GemmOutput out;

  BAYESQ_ALWAYS_INLINE std::uint32_t init(std::int64_t n, std::int64_t m) const {
    return a_u[n] * w_v[m] + a_s[n] * w_t[m];
  }
  // acc[m - m0] = init(n, m) for m in [m0, m1): a loop the compiler vectorizes.
  BAYESQ_ALWAYS_INLINE void init_row(std::int64_t n, std::int64_t m0, std::int64_t m1,
                                     std::uint32_t* __restrict acc) const {
    const std::uint32_t u = a_u[n], s = a_s[n];
    const std::uint32_t* __restrict v = w_v + m0;
    const std::uint32_t* __restrict t = w_t + m0;
    for (std::int64_t m = 0; m < m1 - m0; ++m) acc[m] = u * v[m] + s * t[m];
  }
  // Writes the finished accumulators acc[0 .. m1 - m0) of outputs (n, m0 .. m1 - 1).
  BAYESQ_ALWAYS_INLINE void store_row(std::int64_t n, std::int64_t m0, std::int64_t m1,
                                      const std::uint32_t* __restrict acc) const {
    const std::int64_t count = m1 - m0;
    if (out.out_int) {
      std::int32_t* __restrict y = out.out_int + n * w.rows + m0;
      for (std::int64_t m = 0; m < count; ++m) y[m] = static_cast<std::int32_t>(acc[m]);
      return;
    }
    float* __restrict y = out.out + n * w.rows + m0;
    const float* __restrict scale = out.row_scale + m0;
    const float act = out.act_scale[n];
    if (out.bias) {
      const float* __restrict bias = out.bias + m0;
      for (std::int64_t m = 0; m < count; ++m)
        y[m] = static_cast<float>(static_cast<std::int32_t>(acc[m])) * scale[m] * act + bias[m];
    } else {
      for (std::int64_t m = 0; m < count; ++m)
        y[m] = static_cast<float>(static_cast<std::int32_t>(acc[m])) * scale[m] * act;
    }
  }
};

// Computes the outputs [n0, n1) x [m0, m1) of the problem. One variant per ISA.
#define BAYESQ_DECLARE_GEMM_VARIANT(isa)                                                   \
  void bitserial_rect_##isa(const GemmProblem& p, std::int64_t n0, std::int64_t n1,      \
                            std::int64_t m0, std::int64_t m1);
BAYESQ_DECLARE_GEMM_VARIANT(portable)
BAYESQ_DECLARE_GEMM_VARIANT(avx2)
BAYESQ_DECLARE_GEMM_VARIANT(avx512)
#undef BAYESQ_DECLARE_GEMM_VARIANT

}  // namespace bayesq

#endif  // BAYESQ_BITSERIAL_GEMM_H_
