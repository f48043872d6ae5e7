// Run-time ISA choice, the per-plane tables and the split of the outputs across threads for the
// bit-serial GEMM (the kernels are in bitserial_gemm_{portable,avx2,avx512}.cpp).
#include "bitserial_gemm.h"

#include "thread_pool.h"

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

struct Tables {
  std::vector<std::int32_t> row, coef;
  std::vector<std::uint32_t> beta, sum;  // per row: beta, and the sum of (code - beta) mod 2^32
};

// Row and coefficient of every plane row, and each row's beta and sum of (code - beta).
Tables make_tables(const BitPlanesView& v, bool xor_form, std::int32_t xor_coef) {
  Tables t;
  const std::int64_t planes = v.plane_rows();
  t.row.resize(static_cast<std::size_t>(planes));
  t.coef.resize(static_cast<std::size_t>(planes));
  t.beta.resize(static_cast<std::size_t>(v.rows));
  t.sum.resize(static_cast<std::size_t>(v.rows));
  for (std::int64_t r = 0; r < v.rows; ++r) {
    const int bits = v.bits(r);
    for (int j = 0; j < bits; ++j) {
      const std::int64_t p = v.plane_offsets[r] + j;
      t.row[p] = static_cast<std::int32_t>(r);
      t.coef[p] = xor_form ? xor_coef : plane_coefficient(v.mode, bits, j);
    }
    const std::uint32_t beta = static_cast<std::uint32_t>(row_offset(v.mode, bits));
    t.beta[r] = beta;
    t.sum[r] = static_cast<std::uint32_t>(v.row_sums[r]) - beta * static_cast<std::uint32_t>(v.k);
  }
  return t;
}

}  // namespace

void bitserial_gemm(const BitPlanesView& act, const BitPlanesView& w, const GemmOutput& out,
                    const char* isa, int num_threads) {
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

  const bool use_xor = act.mode == CodeMode::kPlusMinusOne && w.mode == CodeMode::kPlusMinusOne;
  const Tables ta = make_tables(act, use_xor, 1);
  const Tables tw = make_tables(w, use_xor, -2);
  // The additive term init[n, m] = a_u[n] w_v[m] + a_s[n] w_t[m] (see GemmProblem).
  const std::uint32_t k32 = static_cast<std::uint32_t>(act.k);
  std::vector<std::uint32_t> a_u(act.rows), a_s(act.rows), w_v(w.rows), w_t(w.rows);
  for (std::int64_t n = 0; n < act.rows; ++n) {
    a_u[n] = use_xor ? (act.bits(n) > 0 ? k32 : 0u) : k32 * ta.beta[n] + ta.sum[n];
    a_s[n] = use_xor ? 0u : ta.beta[n];
  }
  for (std::int64_t m = 0; m < w.rows; ++m) {
    w_v[m] = use_xor ? (w.bits(m) > 0 ? 1u : 0u) : tw.beta[m];
    w_t[m] = use_xor ? 0u : tw.sum[m];
  }
  GemmProblem p;
  p.a = act;
  p.w = w;
  p.use_xor = use_xor;
  p.a_row = ta.row.data();
  p.a_coef = ta.coef.data();
  p.w_row = tw.row.data();
  p.w_coef = tw.coef.data();
  p.a_u = a_u.data();
  p.a_s = a_s.data();
  p.w_v = w_v.data();
  p.w_t = w_t.data();
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
