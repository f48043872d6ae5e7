// VNQ's multi-spike KL approximation and its gradient, fused in one pass over the weights.
// Torch-free: plain float buffers. See bayesq/priors.py for the formula and its references.
#ifndef BAYESQ_MULTI_SPIKE_KL_H_
#define BAYESQ_MULTI_SPIKE_KL_H_

#include <cstddef>
#include <cstdint>

namespace bayesq {

struct MultiSpikeKLArgs {
  const float* theta;        // posterior means, n values
  const float* log_sigma2;   // posterior log variances, n values
  std::size_t n;
  float codebook_scale;      // level spacing r > 0
  int num_levels;            // odd, >= 1
  float* kl;                 // out: KL per weight (n)
  float* grad_theta;         // out: dKL_i / dtheta_i (n)
  float* grad_log_sigma2;    // out: dKL_i / dlog_sigma2_i (n)
  float* grad_scale;         // out: dKL_i / dr (n)
};

// Returns the number of non-finite inputs seen (the outputs are then unspecified).
// log sigma^2 is clamped to [-80, 80] (gradient 0 beyond), which keeps 1/sigma^2 finite.
// The ISA variants compute the same formula; they differ only in how the compiler vectorized it.
std::size_t multi_spike_kl_portable(const MultiSpikeKLArgs& args);
std::size_t multi_spike_kl_avx2(const MultiSpikeKLArgs& args);
std::size_t multi_spike_kl_avx512(const MultiSpikeKLArgs& args);

// The fastest variant the running CPU supports, or the one named ("portable", "avx2", "avx512"),
// over num_threads std::threads (each a contiguous slice of the weights; 1 = the calling thread).
std::size_t multi_spike_kl(const MultiSpikeKLArgs& args, const char* isa = nullptr,
                           int num_threads = 1);

}  // namespace bayesq

#endif  // BAYESQ_MULTI_SPIKE_KL_H_
