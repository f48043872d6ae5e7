// Standard normal noise for the local reparameterization trick, fast enough not to dominate a
// training step (torch's CPU generator draws about 150-250 M normals/s on one thread; this one
// vectorizes and threads).
#ifndef BAYESQ_NORMAL_RNG_H_
#define BAYESQ_NORMAL_RNG_H_

#include <cstddef>
#include <cstdint>

namespace bayesq {

// out[i] ~ N(0, 1), independent, a pure function of (seed, n, i): counter-based, so any slicing
// into threads gives the same numbers. Pair j = (out[j], out[n/2 + j]) comes from one SplitMix64
// output (state seed + (j+1) * golden ratio, its finalizer as the hash) turned into two 24-bit
// uniforms u1 in (0, 1], u2 in [0, 1) and then Box-Muller:
//   r = sqrt(-2 log u1), out = (r cos 2 pi u2, r sin 2 pi u2).
// With 24-bit u1 the largest magnitude is sqrt(48 log 2) = 5.77 (P(|z| > 5.77) = 8e-9).
void normal_fill(float* out, std::size_t n, std::uint64_t seed, const char* isa = nullptr,
                 int num_threads = 1);

void normal_fill_portable(float* out, std::size_t n, std::uint64_t seed);
void normal_fill_avx2(float* out, std::size_t n, std::uint64_t seed);
void normal_fill_avx512(float* out, std::size_t n, std::uint64_t seed);

}  // namespace bayesq

#endif  // BAYESQ_NORMAL_RNG_H_
