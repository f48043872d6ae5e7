// Loop bodies of normal_fill and of the fused local-reparameterization sample, included once per
// ISA variant file (see multi_spike_kl_body.h for why: per-file -m flags and -ffast-math so that
// GCC vectorizes log and sin through libmvec). Not a public header.
//
// The noise is counter-based: pair j of a sequence of n values is (z[j], z[n/2 + j]), a function
// of (seed, j) only, so a backward pass can regenerate exactly the noise its forward pass used.
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

// out = mean + sqrt(var + floor) * z, z the noise sequence of (seed, n); pairs [j0, j1) only,
// and the odd last value when `tail`.
static void BAYESQ_VARIANT(lrt_sample)(const float* __restrict mean, const float* __restrict var,
                                       float* __restrict out, std::size_t n, std::uint64_t seed,
                                       float floor, std::size_t j0, std::size_t j1, bool tail) {
  const std::size_t pairs = n / 2;
#pragma omp simd
  for (std::size_t j = j0; j < j1; ++j) {
    float z0, z1;
    normal_pair(seed, j, z0, z1);
    out[j] = mean[j] + std::sqrt(var[j] + floor) * z0;
    out[pairs + j] = mean[pairs + j] + std::sqrt(var[pairs + j] + floor) * z1;
  }
  if (tail && n % 2) {
    float z0, unused;
    normal_pair(seed, pairs, z0, unused);
    out[n - 1] = mean[n - 1] + std::sqrt(var[n - 1] + floor) * z0;
  }
}

// grad_var = grad_out * z / (2 sqrt(var + floor)), with the same z as the forward pass; pairs
// [j0, j1) only, and the odd last value when `tail`.
static void BAYESQ_VARIANT(lrt_sample_backward)(const float* __restrict grad_out,
                                                const float* __restrict var,
                                                float* __restrict grad_var, std::size_t n,
                                                std::uint64_t seed, float floor, std::size_t j0,
                                                std::size_t j1, bool tail) {
  const std::size_t pairs = n / 2;
#pragma omp simd
  for (std::size_t j = j0; j < j1; ++j) {
    float z0, z1;
    normal_pair(seed, j, z0, z1);
    grad_var[j] = grad_out[j] * z0 * 0.5f / std::sqrt(var[j] + floor);
    grad_var[pairs + j] = grad_out[pairs + j] * z1 * 0.5f / std::sqrt(var[pairs + j] + floor);
  }
  if (tail && n % 2) {
    float z0, unused;
    normal_pair(seed, pairs, z0, unused);
    grad_var[n - 1] = grad_out[n - 1] * z0 * 0.5f / std::sqrt(var[n - 1] + floor);
  }
}
