// Standard normal noise for the local reparameterization trick, fast enough not to dominate a
// training step (torch's CPU generator draws about 150-250 M normals/s on one thread; this one
// vectorizes and threads).
#ifndef BAYESQ_NORMAL_RNG_H_
#define BAYESQ_NORMAL_RNG_H_

#include <cstddef>
#include <cstdint>

namespace bayesq {

// out[i] ~ N(0, 1), independent, a pure function of (seed, n, i): counter-based, so any slicing
// into threads gives the same numbers. Pair j = (out[j], out[n/2 + j]) comes from two 32-bit
// hashes of j under keys derived from the 64-bit seed, turned into two 24-bit uniforms
// u1 in (0, 1], u2 in [0, 1) and then Box-Muller:
//   r = sqrt(-2 log u1), out = (r cos 2 pi u2, r sin 2 pi u2).
// With 24-bit u1 the largest magnitude is sqrt(48 log 2) = 5.77 (P(|z| > 5.77) = 8e-9).
// The pair index is 32 bits: at most 2^33 values per call (std::invalid_argument beyond).
void normal_fill(float* out, std::size_t n, std::uint64_t seed, const char* isa = nullptr,
                 int num_threads = 1);

// The local reparameterization trick fused: out = mean + sqrt(var + floor) * z, z the noise that
// normal_fill(n, seed) would give, and the slope the backward pass needs,
// dout_dvar = z / (2 sqrt(var + floor)), so that grad_var = grad_out * dout_dvar is one multiply
// (grad_mean is grad_out itself). Storing the slope costs one array; regenerating z in the
// backward pass instead cost as much as the forward pass (a log, a sqrt and two sines per pair).
// Returns true when an entry of var is negative (below -0.0) or a sample or slope came out NaN
// or infinite (non-finite mean or var, var + floor = 0 or overflowing): then out and dout_dvar
// must not be used. The check rides in the same pass (integer tests on bit patterns).
bool lrt_sample(const float* mean, const float* var, float* out, float* dout_dvar, std::size_t n,
                std::uint64_t seed, float floor, const char* isa = nullptr, int num_threads = 1);

constexpr std::size_t kMaxNoisePairs = std::size_t{1} << 32;

#define BAYESQ_DECLARE_NOISE_VARIANT(isa)                                                   \
  void normal_fill_##isa(float* out, std::size_t n, std::uint64_t seed, std::size_t j0,     \
                         std::size_t j1, bool tail);                                         \
  bool lrt_sample_##isa(const float* mean, const float* var, float* out, float* dout_dvar,  \
                        std::size_t n, std::uint64_t seed, float floor, std::size_t j0,      \
                        std::size_t j1, bool tail);
BAYESQ_DECLARE_NOISE_VARIANT(portable)
BAYESQ_DECLARE_NOISE_VARIANT(avx2)
BAYESQ_DECLARE_NOISE_VARIANT(avx512)
#undef BAYESQ_DECLARE_NOISE_VARIANT

}  // namespace bayesq

#endif  // BAYESQ_NORMAL_RNG_H_
