// Loop bodies of normal_fill and of the fused local-reparameterization sample, included once per
// ISA variant file (see multi_spike_kl_body.h for why: per-file -m flags and -ffast-math so that
// GCC vectorizes log and sin through libmvec). Not a public header.
//
// The noise is counter-based: pair j of a sequence of n values is (z[j], z[n/2 + j]), a function
// of (seed, j) only, so any split of the work over threads draws the same numbers.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <algorithm>

#include "vnq/normal_rng.h"

namespace {

// A 32-bit integer hash (xorshift-multiply, two rounds): a bijection of 32-bit words whose output
// bits all depend on every input bit. 32-bit multiplies only, so AVX2 (vpmulld) vectorizes it as
// well as AVX-512 does; a 64-bit hash would leave AVX2 scalar (it has no 64-bit multiply).
inline std::uint32_t mix32(std::uint32_t x) {
  x ^= x >> 16;
  x *= 0x7feb352du;
  x ^= x >> 15;
  x *= 0x846ca68bu;
  x ^= x >> 16;
  return x;
}

// The two 32-bit keys of a 64-bit seed, each depending on all 64 bits.
struct NoiseKeys {
  std::uint32_t first, second;
  explicit NoiseKeys(std::uint64_t seed) {
    const auto lo = static_cast<std::uint32_t>(seed);
    const auto hi = static_cast<std::uint32_t>(seed >> 32);
    first = mix32(lo ^ mix32(hi + 0x9e3779b9u));
    second = mix32(hi ^ mix32(lo + 0x85ebca6bu));
  }
};

// Box-Muller on two hashes of the pair index j (< 2^32) under the seed's keys: u1 in (0, 1] and
// u2 in [0, 1), 24 bits each, r = sqrt(-2 log u1), (r cos 2 pi u2, r sin 2 pi u2).
inline void normal_pair(const NoiseKeys& keys, std::uint32_t j, float& z_first, float& z_second) {
  constexpr float kTwoPi = 6.28318530717958647692f;
  constexpr float kHalfPi = 1.57079632679489662f;
  constexpr float kInv24 = 1.0f / 16777216.0f;  // 2^-24
  const std::uint32_t a = mix32(j * 0x9e3779b9u + keys.first);
  const std::uint32_t b = mix32((j ^ keys.second) * 0x85ebca6bu + 0xc2b2ae35u);
  // < 2^24, so the conversions go through int32 (AVX2 has no unsigned-to-float instruction)
  const float u1 = static_cast<float>(static_cast<std::int32_t>(a >> 8) + 1) * kInv24;
  const float u2 = static_cast<float>(static_cast<std::int32_t>(b >> 8)) * kInv24;
  const float radius = std::sqrt(-2.0f * std::log(u1));
  // cos as a shifted sin: GCC would fuse sin and cos of one angle into a scalar sincosf call
  z_first = radius * std::sin(kTwoPi * u2 + kHalfPi);
  z_second = radius * std::sin(kTwoPi * u2);
}

// What the LRT sample's check keeps per value, as integers so that -ffast-math (these files
// assume finite math, and could fold isnan() away) cannot drop it: the bit pattern of var and
// the larger magnitude pattern of the sample and its slope. Reduced with unsigned max over the
// pass; the pass is bad if the largest var pattern exceeds -0.0's (a negative variance: sign
// bit set, not -0.0) or the largest magnitude pattern reaches infinity's (NaN or infinite).
constexpr std::uint32_t kMinusZeroBits = 0x80000000u, kInfinityBits = 0x7f800000u;

inline std::uint32_t bits_of(float x) {
  std::uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return u;
}
inline std::uint32_t magnitude_bits(float a, float b) {
  return std::max(bits_of(a) & 0x7fffffffu, bits_of(b) & 0x7fffffffu);
}

}  // namespace

// out = the noise sequence of (seed, n): pairs [j0, j1) only, and the odd last value when `tail`.
static void BAYESQ_VARIANT(normal_fill)(float* __restrict out, std::size_t n, std::uint64_t seed,
                                        std::size_t j0, std::size_t j1, bool tail) {
  const NoiseKeys keys(seed);
  const std::size_t pairs = n / 2;
  float* __restrict first = out;
  float* __restrict second = out + pairs;
#pragma omp simd
  for (std::size_t j = j0; j < j1; ++j)
    normal_pair(keys, static_cast<std::uint32_t>(j), first[j], second[j]);
  if (tail && n % 2) {  // the odd last value is the first half of pair `pairs`
    float unused;
    normal_pair(keys, static_cast<std::uint32_t>(pairs), out[n - 1], unused);
  }
}

// out = mean + sqrt(var + floor) * z and dout_dvar = z / (2 sqrt(var + floor)), z the noise
// sequence of (seed, n); pairs [j0, j1) only, and the odd last value when `tail`. Returns true
// when a value has a negative variance or a non-finite sample or slope (see bits_of):
// found in the same pass, in registers, so the check costs no extra read of the arrays.
static bool BAYESQ_VARIANT(lrt_sample)(const float* __restrict mean, const float* __restrict var,
                                       float* __restrict out, float* __restrict dout_dvar,
                                       std::size_t n, std::uint64_t seed, float floor,
                                       std::size_t j0, std::size_t j1, bool tail) {
  const NoiseKeys keys(seed);
  const std::size_t pairs = n / 2;
  std::uint32_t var_bits = 0, out_bits = 0;
#pragma omp simd reduction(max : var_bits, out_bits)
  for (std::size_t j = j0; j < j1; ++j) {
    float z0, z1;
    normal_pair(keys, static_cast<std::uint32_t>(j), z0, z1);
    const float inv_std0 = 1.0f / std::sqrt(var[j] + floor);
    const float inv_std1 = 1.0f / std::sqrt(var[pairs + j] + floor);
    // sqrt(v) = v / sqrt(v): one square root per value serves the sample and its slope
    out[j] = mean[j] + (var[j] + floor) * inv_std0 * z0;
    out[pairs + j] = mean[pairs + j] + (var[pairs + j] + floor) * inv_std1 * z1;
    dout_dvar[j] = 0.5f * z0 * inv_std0;
    dout_dvar[pairs + j] = 0.5f * z1 * inv_std1;
    var_bits = std::max(var_bits, std::max(bits_of(var[j]), bits_of(var[pairs + j])));
    out_bits = std::max(out_bits, std::max(magnitude_bits(out[j], dout_dvar[j]),
                                           magnitude_bits(out[pairs + j], dout_dvar[pairs + j])));
  }
  if (tail && n % 2) {
    float z0, unused;
    normal_pair(keys, static_cast<std::uint32_t>(pairs), z0, unused);
    const float inv_std = 1.0f / std::sqrt(var[n - 1] + floor);
    out[n - 1] = mean[n - 1] + (var[n - 1] + floor) * inv_std * z0;
    dout_dvar[n - 1] = 0.5f * z0 * inv_std;
    var_bits = std::max(var_bits, bits_of(var[n - 1]));
    out_bits = std::max(out_bits, magnitude_bits(out[n - 1], dout_dvar[n - 1]));
  }
  return var_bits > kMinusZeroBits || out_bits >= kInfinityBits;
}
