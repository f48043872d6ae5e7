// Loop body of normal_fill, included once per ISA variant file (see multi_spike_kl_body.h for
// why: per-file -m flags and -ffast-math so that GCC vectorizes log/sin/cos through libmvec).
// `first_pair` lets a thread start in the middle of the sequence.
#include <cmath>
#include <cstdint>

#include "normal_rng.h"

static void BAYESQ_RNG_FUNCTION(float* __restrict out, std::size_t n, std::uint64_t seed) {
  constexpr std::uint64_t kGolden = 0x9e3779b97f4a7c15ull;
  constexpr float kTwoPi = 6.28318530717958647692f;
  constexpr float kInv24 = 1.0f / 16777216.0f;  // 2^-24
  const std::size_t pairs = n / 2;
  // Pair j fills out[j] and out[pairs + j]: two unit-stride streams, which GCC vectorizes.
  float* __restrict cos_half = out;
  float* __restrict sin_half = out + pairs;
#pragma omp simd
  for (std::size_t j = 0; j < pairs; ++j) {
    std::uint64_t z = seed + (j + 1) * kGolden;  // SplitMix64 state j, then its finalizer
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u1 = static_cast<float>((z >> 40) + 1) * kInv24;                // (0, 1]
    const float u2 = static_cast<float>((z >> 16) & 0xffffffull) * kInv24;      // [0, 1)
    const float radius = std::sqrt(-2.0f * std::log(u1));
    // cos as a shifted sin: GCC would fuse sin and cos of one angle into a scalar sincosf call
    cos_half[j] = radius * std::sin(kTwoPi * u2 + 1.57079632679489662f);
    sin_half[j] = radius * std::sin(kTwoPi * u2);
  }
  if (n % 2) {  // the odd last value is the first half of pair `pairs`
    std::uint64_t z = seed + (pairs + 1) * kGolden;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u1 = static_cast<float>((z >> 40) + 1) * kInv24;
    const float u2 = static_cast<float>((z >> 16) & 0xffffffull) * kInv24;
    out[n - 1] = std::sqrt(-2.0f * std::log(u1)) * std::sin(kTwoPi * u2 + 1.57079632679489662f);
  }
}
