// The loop body shared by the ISA variants of multi_spike_kl (included once per variant file,
// each compiled with its own -m flags and -ffast-math so that glibc's libmvec vectorizes exp and
// log). -ffast-math assumes finite values, so finiteness is checked on the bit patterns, which the
// compiler cannot assume away. Not a public header.
//
// Per weight, with d_k = theta - c_k, s_k = d_k^2, log u_k = log s_k - log sigma^2 (u = 1/alpha):
//   G(log u) = k1 sigmoid(k3 log u - k2) + 0.5 softplus(log u)          (Molchanov Eq. 14)
//   W_k = exp(-s_k / (2 tau^2)), tau = 0.375 r, W_0 = 1 - sum_k W_k      (VNQ Eq. 9)
//   KL = sum_k W_k G(log u_k) + W_0 G(log u_0)
// and its derivatives in theta, log sigma^2 and r, by the chain rule through d, s, log u and W.

#include <cmath>
#include <cstring>

#include "vnq/multi_spike_kl.h"

namespace {

constexpr float kK1 = 0.63576f, kK2 = 1.87320f, kK3 = 1.48695f;
constexpr float kTauPerSpacing = 0.375f;      // 0.075 / 0.2, VNQ Sec. 3.2
constexpr float kMinSquaredDistance = 1e-16f;  // as _MIN_SQUARED_DISTANCE in priors.py

inline std::uint32_t float_bits(float x) {
  std::uint32_t b;
  std::memcpy(&b, &x, sizeof b);
  return b;
}

// G and dG/dlog u at one spike, from the squared distance s (unclamped) and
// inv_sigma2 = exp(-log sigma^2). With u = s / sigma^2: softplus(log u) = log(1 + u) and its
// slope sigmoid(log u) = u / (1 + u), so a spike costs three transcendental calls (log u, the
// sigmoid's exp, log(1 + u)). `moves` is 1 where s is above the floor (log u moves with s), else 0.
inline void spike(float s, float inv_sigma2, float& g, float& dg, float& moves) {
  const float clamped = s > kMinSquaredDistance ? s : kMinSquaredDistance;
  moves = s > kMinSquaredDistance ? 1.0f : 0.0f;
  const float u = clamped * inv_sigma2;
  const float log_u = std::log(u);
  const float sz = 1.0f / (1.0f + std::exp(kK2 - kK3 * log_u));
  g = kK1 * sz + 0.5f * std::log(1.0f + u);
  dg = kK1 * kK3 * sz * (1.0f - sz) + 0.5f * u / (1.0f + u);
}

}  // namespace

// kHalf = (num_levels - 1) / 2 at compile time, so the loop over spikes unrolls and the loop
// over weights vectorizes (GCC keeps a run-time inner loop scalar).
template <int kHalf>
static std::size_t kl_loop(const bayesq::MultiSpikeKLArgs& a) {
  const float r = a.codebook_scale;
  const float tau = kTauPerSpacing * r;
  const float inv_two_tau2 = 1.0f / (2.0f * tau * tau);
  constexpr bool clamp_zero_window = kHalf > 1;
  // Restrict-qualified locals: the outputs never alias the inputs (the binding allocates them).
  const float* __restrict theta = a.theta;
  const float* __restrict log_sigma2 = a.log_sigma2;
  float* __restrict out_kl = a.kl;
  float* __restrict out_theta = a.grad_theta;
  float* __restrict out_log_sigma2 = a.grad_log_sigma2;
  float* __restrict out_scale = a.grad_scale;
  const std::size_t n = a.n;
  std::size_t non_finite = 0;
#pragma omp simd reduction(+ : non_finite)
  for (std::size_t i = 0; i < n; ++i) {
    const float t = theta[i];
    // |log sigma^2| <= 80 keeps 1/sigma^2 finite in float32 (VNQ clips to [-10, 1] anyway)
    const float l = std::fmin(std::fmax(log_sigma2[i], -80.0f), 80.0f);
    const float inv_sigma2 = std::exp(-l);
    non_finite += ((float_bits(t) & 0x7f800000u) == 0x7f800000u) +
                  ((float_bits(l) & 0x7f800000u) == 0x7f800000u);
    float kl = 0.0f, gt = 0.0f, gl = 0.0f, gr = 0.0f;
    float w_sum = 0.0f, dw_sum_dt = 0.0f, dw_sum_dr = 0.0f;
#pragma GCC unroll 16
    for (int k = -kHalf; k <= kHalf; ++k) {
      if (k == 0) continue;
      const float o = static_cast<float>(k);
      const float d = t - o * r;
      const float s = d * d;
      const float w = std::exp(-s * inv_two_tau2);
      const float dw_dt = -2.0f * w * d * inv_two_tau2;
      // inv_two_tau2 ~ 1/r^2, and d depends on r through c_k = k r
      const float dw_dr = w * (2.0f * d * o * inv_two_tau2 + 2.0f * s * inv_two_tau2 / r);
      float g, dg, moves;
      spike(s, inv_sigma2, g, dg, moves);
      const float inv_d = moves / (d + (moves == 0.0f ? 1.0f : 0.0f));  // 1/d, or 0 when floored
      kl += w * g;
      gt += dw_dt * g + w * dg * 2.0f * inv_d;
      gl -= w * dg;
      gr += dw_dr * g - w * dg * 2.0f * o * inv_d;
      w_sum += w;
      dw_sum_dt += dw_dt;
      dw_sum_dr += dw_dr;
    }
    float w0 = 1.0f - w_sum;
    float dw0_dt = -dw_sum_dt, dw0_dr = -dw_sum_dr;
    if (clamp_zero_window && w0 < 0.0f) {
      w0 = 0.0f;
      dw0_dt = 0.0f;
      dw0_dr = 0.0f;
    }
    float g0, dg0, moves0;
    spike(t * t, inv_sigma2, g0, dg0, moves0);
    const float inv_t = moves0 / (t + (moves0 == 0.0f ? 1.0f : 0.0f));
    out_kl[i] = kl + w0 * g0;
    out_theta[i] = gt + dw0_dt * g0 + w0 * dg0 * 2.0f * inv_t;
    out_log_sigma2[i] = gl - w0 * dg0;
    out_scale[i] = gr + dw0_dr * g0;
  }
  return non_finite;
}

static std::size_t BAYESQ_KL_FUNCTION(const bayesq::MultiSpikeKLArgs& a) {
  switch ((a.num_levels - 1) / 2) {
    case 0: return kl_loop<0>(a);
    case 1: return kl_loop<1>(a);
    case 2: return kl_loop<2>(a);
    case 3: return kl_loop<3>(a);
    case 4: return kl_loop<4>(a);
    case 5: return kl_loop<5>(a);
    case 6: return kl_loop<6>(a);
    case 7: return kl_loop<7>(a);
    default: return static_cast<std::size_t>(-1);  // the binding refuses num_levels > 15
  }
}
