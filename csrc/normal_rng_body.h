// Loop bodies of normal_fill and of the fused local-reparameterization sample, included once per
// ISA variant file (see multi_spike_kl_body.h for why: per-file -m flags and -ffast-math so that
// GCC vectorizes log and sin through libmvec). Not a public header.
//
// The noise is counter-based: pair j of a sequence of n values is (z[j], z[n/2 + j]), a function
// of (seed, j) only, so any split of the work over threads draws the same numbers.
#include <cmath>
#include <cstdint>

#include "normal_rng.h"

namespace {

constexpr std::uint64_t kGolden = 0x9e3779b97f4a7c15ull;

// Box-Muller on one SplitMix64 output (state seed + (j + 1) * golden ratio).
inline void normal_pair(std::uint64_t seed, std::size_t j, float& z_first, float& z_second) {
  constexpr float kTwoPi = 6.28318530717958647692f;
  constexpr float kHalfPi = 1.57079632679489662f;
  constexpr float kInv24 = 1.0f / 16777216.0f;  // 2^-24
  std::uint64_t z = seed + (j + 1) * kGolden;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  const float u1 = static_cast<float>((z >> 40) + 1) * kInv24;            // (0, 1]
  const float u2 = static_cast<float>((z >> 16) & 0xffffffull) * kInv24;  // [0, 1)
  const float radius = std::sqrt(-2.0f * std::log(u1));
  // cos as a shifted sin: GCC would fuse sin and cos of one angle into a scalar sincosf call
  z_first = radius * std::sin(kTwoPi * u2 + kHalfPi);
  z_second = radius * std::sin(kTwoPi * u2);
}

}  // namespace

static void BAYESQ_VARIANT(normal_fill)(float* __restrict out, std::size_t n, std::uint64_t seed) {
  const std::size_t pairs = n / 2;
  float* __restrict first = out;
  float* __restrict second = out + pairs;
#pragma omp simd
  for (std::size_t j = 0; j < pairs; ++j) normal_pair(seed, j, first[j], second[j]);
  if (n % 2) {  // the odd last value is the first half of pair `pairs`
    float unused;
    normal_pair(seed, pairs, out[n - 1], unused);
  }
}

// out = mean + sqrt(var + floor) * z and dout_dvar = z / (2 sqrt(var + floor)), z the noise
// sequence of (seed, n); pairs [j0, j1) only, and the odd last value when `tail`.
static void BAYESQ_VARIANT(lrt_sample)(const float* __restrict mean, const float* __restrict var,
                                       float* __restrict out, float* __restrict dout_dvar,
                                       std::size_t n, std::uint64_t seed, float floor,
                                       std::size_t j0, std::size_t j1, bool tail) {
  const std::size_t pairs = n / 2;
#pragma omp simd
  for (std::size_t j = j0; j < j1; ++j) {
    float z0, z1;
    normal_pair(seed, j, z0, z1);
    const float inv_std0 = 1.0f / std::sqrt(var[j] + floor);
    const float inv_std1 = 1.0f / std::sqrt(var[pairs + j] + floor);
    // sqrt(v) = v / sqrt(v): one square root per value serves the sample and its slope
    out[j] = mean[j] + (var[j] + floor) * inv_std0 * z0;
    out[pairs + j] = mean[pairs + j] + (var[pairs + j] + floor) * inv_std1 * z1;
    dout_dvar[j] = 0.5f * z0 * inv_std0;
    dout_dvar[pairs + j] = 0.5f * z1 * inv_std1;
  }
  if (tail && n % 2) {
    float z0, unused;
    normal_pair(seed, pairs, z0, unused);
    const float inv_std = 1.0f / std::sqrt(var[n - 1] + floor);
    out[n - 1] = mean[n - 1] + (var[n - 1] + floor) * inv_std * z0;
    dout_dvar[n - 1] = 0.5f * z0 * inv_std;
  }
}
