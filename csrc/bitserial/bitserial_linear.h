// A quantized linear layer on the bit-serial kernels: float activations in, float outputs out,
// in one call (the per-call path of bayesq.runtime, where at batch 1 every microsecond of
// overhead shows):
//   codes  = quantize(x)                          (quantize_pack_bit_planes: act_bits, act_mode)
//   y[n,m] = (codes[n] . W[m]) * row_scale[m] * act_scale + bias[m]    (bitserial_gemm)
// The weights are packed once by the caller and borrowed (the caller keeps them alive and
// unchanged); the activation planes live in a scratch buffer reused across calls.
#ifndef BAYESQ_BITSERIAL_LINEAR_H_
#define BAYESQ_BITSERIAL_LINEAR_H_

#include <cstdint>
#include <mutex>
#include <vector>

#include "bitserial/bitpack.h"
#include "bitserial/bitserial_gemm.h"

namespace bayesq {

class BitserialLinear {
 public:
  // weights must pass check_layout (the constructor checks it against planes_size); row_scale
  // and bias (nullptr for none) have weights.rows entries; act_scale finite and > 0.
  BitserialLinear(const BitPlanesView& weights, std::int64_t planes_size, const float* row_scale,
                  const float* bias, int act_bits, CodeMode act_mode, float act_scale);

  // x: n x k floats, out: n x rows floats, both row-major and contiguous. Throws
  // std::invalid_argument if x holds NaN or infinities. Safe to call from several threads (the
  // calls take turns on the scratch buffer).
  void forward(const float* x, std::int64_t n, float* out, const char* isa, int num_threads);

  std::int64_t in_features() const { return weights_.k; }
  std::int64_t out_features() const { return weights_.rows; }

 private:
  BitPlanesView weights_;
  const float* row_scale_;
  const float* bias_;
  int act_bits_;
  CodeMode act_mode_;
  float act_scale_;
  WeightTerms terms_;  // built once: the weights never change
  std::mutex scratch_mutex_;
  std::vector<word_t> planes_;
  std::vector<std::int64_t> offsets_, sums_;
  std::vector<float> act_scales_;
};

}  // namespace bayesq

#endif  // BAYESQ_BITSERIAL_LINEAR_H_
