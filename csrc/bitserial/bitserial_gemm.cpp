// Run-time ISA choice, the per-plane tables and the split of the outputs across threads for the
// bit-serial GEMM (the kernels are in bitserial_gemm_{portable,avx2,avx512}.cpp).
#include "bitserial/bitserial_gemm.h"

#include "common/thread_pool.h"

#include <algorithm>
#include <stdexcept>
#include <vector>

namespace bayesq {

namespace {

using RectVariant = void (*)(const GemmProblem&, std::int64_t, std::int64_t, std::int64_t,
                             std::int64_t);

// Below about this many word operations (plane pairs x words) per thread, handing work to a
// pool worker (a few microseconds) costs more than it saves.
constexpr std::int64_t kMinWordOpsPerThread = 1 << 15;

// The coefficient of every plane row (c_i / d_j, or the XOR form's coefficient), and per row
// its beta and its sum of (code - beta) mod 2^32.
void plane_coefficients(const BitPlanesView& v, bool xor_form, std::int32_t xor_coef,
                        std::vector<std::int32_t>& coef, std::vector<std::uint32_t>& beta,
                        std::vector<std::uint32_t>& sum) {
  coef.resize(static_cast<std::size_t>(v.plane_rows()));
  beta.resize(static_cast<std::size_t>(v.rows));
  sum.resize(static_cast<std::size_t>(v.rows));
  for (std::int64_t r = 0; r < v.rows; ++r) {
    const int bits = v.bits(r);
    for (int j = 0; j < bits; ++j)
      coef[v.plane_offsets[r] + j] = xor_form ? xor_coef : plane_coefficient(v.mode, bits, j);
    beta[r] = static_cast<std::uint32_t>(row_offset(v.mode, bits));
    sum[r] = static_cast<std::uint32_t>(v.row_sums[r]) - beta[r] * static_cast<std::uint32_t>(v.k);
  }
}

}  // namespace

bool uses_xor_form(CodeMode act_mode, CodeMode weight_mode) {
  return act_mode == CodeMode::kPlusMinusOne && weight_mode == CodeMode::kPlusMinusOne;
}

WeightTerms weight_terms(const BitPlanesView& w, bool use_xor) {
  WeightTerms t;
  t.use_xor = use_xor;
  std::vector<std::uint32_t> beta, sum;
  plane_coefficients(w, use_xor, -2, t.coef, beta, sum);
  t.v.resize(static_cast<std::size_t>(w.rows));
  t.t.resize(static_cast<std::size_t>(w.rows));
  for (std::int64_t m = 0; m < w.rows; ++m) {
    t.v[m] = use_xor ? (w.bits(m) > 0 ? 1u : 0u) : beta[m];
    t.t[m] = use_xor ? 0u : sum[m];
  }
  return t;
}

void bitserial_gemm(const BitPlanesView& act, const BitPlanesView& w, const GemmOutput& out,
                    const char* isa, int num_threads, const WeightTerms* terms) {
  if (act.k != w.k) throw std::invalid_argument("bitserial_gemm: activations and weights differ in k");
  if ((out.out_int == nullptr) == (out.out == nullptr))
    throw std::invalid_argument("bitserial_gemm: give exactly one of out_int and out");
  if (out.out && (out.row_scale == nullptr || out.act_scale == nullptr))
    throw std::invalid_argument("bitserial_gemm: float output needs row_scale and act_scale");
  RectVariant rect = bitserial_rect_portable;
  switch (resolve_bitserial_isa(isa)) {
    case Isa::kAvx512: rect = bitserial_rect_avx512; break;
    case Isa::kAvx2: rect = bitserial_rect_avx2; break;
    default: break;
  }
  if (act.rows == 0 || w.rows == 0) return;
  if (act.rows > INT32_MAX || w.rows > INT32_MAX)
    throw std::invalid_argument("bitserial_gemm: more than 2^31 rows");

  const bool use_xor = uses_xor_form(act.mode, w.mode);
  WeightTerms own_terms;
  if (terms == nullptr) {
    own_terms = weight_terms(w, use_xor);
    terms = &own_terms;
  } else if (terms->use_xor != use_xor ||
             static_cast<std::int64_t>(terms->coef.size()) != w.plane_rows() ||
             static_cast<std::int64_t>(terms->v.size()) != w.rows) {
    throw std::invalid_argument("bitserial_gemm: weight terms built for other weights");
  }
  std::vector<std::int32_t> a_coef;
  std::vector<std::uint32_t> a_beta, a_sum;
  plane_coefficients(act, use_xor, 1, a_coef, a_beta, a_sum);
  // The additive term init[n, m] = a_u[n] w_v[m] + a_s[n] w_t[m] (see GemmProblem).
  const std::uint32_t k32 = static_cast<std::uint32_t>(act.k);
  std::vector<std::uint32_t> a_u(act.rows), a_s(act.rows);
  for (std::int64_t n = 0; n < act.rows; ++n) {
    a_u[n] = use_xor ? (act.bits(n) > 0 ? k32 : 0u) : k32 * a_beta[n] + a_sum[n];
    a_s[n] = use_xor ? 0u : a_beta[n];
  }
  GemmProblem p;
  p.a = act;
  p.w = w;
  p.use_xor = use_xor;
  p.a_coef = a_coef.data();
  p.w_coef = terms->coef.data();
  p.a_u = a_u.data();
  p.a_s = a_s.data();
  p.w_v = terms->v.data();
  p.w_t = terms->t.data();
  p.out = out;

  const std::int64_t pa = act.plane_rows(), pw = w.plane_rows();
  const std::int64_t work = pa * pw * act.words;
  std::int64_t threads = std::max(1, num_threads);
  threads = std::min(threads, std::max<std::int64_t>(1, work / kMinWordOpsPerThread));
  // Split the weight rows when there are enough weight planes for every thread to run whole
  // register tiles (each thread then reads only its share of the weights, which is what
  // matters at batch 1); otherwise split the activation rows.
  const bool split_w = pw >= threads * 32 && w.rows >= threads;
  if (!split_w) threads = std::min(threads, act.rows);
  if (threads <= 1) {
    rect(p, 0, act.rows, 0, w.rows);
    return;
  }
  std::vector<std::int64_t> bounds(static_cast<std::size_t>(threads + 1));
  for (std::int64_t t = 0; t <= threads; ++t) {
    if (split_w) {  // row boundaries at equal shares of the weight planes
      const std::int64_t target = pw * t / threads;
      bounds[t] = std::lower_bound(w.plane_offsets, w.plane_offsets + w.rows + 1, target) -
                  w.plane_offsets;
    } else {
      bounds[t] = act.rows * t / threads;
    }
  }
  bounds[threads] = split_w ? w.rows : act.rows;
  parallel_for(static_cast<int>(threads), [&](int t) {
    const std::int64_t lo = bounds[t], hi = bounds[t + 1];
    if (split_w)
      rect(p, 0, act.rows, lo, hi);
    else
      rect(p, lo, hi, 0, w.rows);
  });
}

}  // namespace bayesq
