// BitserialLinear: quantize + pack the activations, then the bit-serial GEMM (see the header).
#include "bitserial/bitserial_linear.h"

#include <cmath>
#include <stdexcept>
#include <string>

#include "bitserial/bitserial_gemm.h"

namespace bayesq {

BitserialLinear::BitserialLinear(const BitPlanesView& weights, std::int64_t planes_size,
                                 const float* row_scale, const float* bias, int act_bits,
                                 CodeMode act_mode, float act_scale)
    : weights_(weights),
      row_scale_(row_scale),
      bias_(bias),
      act_bits_(act_bits),
      act_mode_(act_mode),
      act_scale_(act_scale) {
  check_layout(weights, planes_size, "weights");
  const int top = act_mode == CodeMode::kPlusMinusOne ? 1 : kMaxPlanes;
  if (act_bits < 1 || act_bits > top)
    throw std::invalid_argument("activation bits must lie in 1.." + std::to_string(top));
  if (!(std::isfinite(act_scale) && act_scale > 0.0f))
    throw std::invalid_argument("act_scale must be finite and > 0");
  if (row_scale == nullptr) throw std::invalid_argument("row_scale is required");
  terms_ = weight_terms(weights, uses_xor_form(act_mode, weights.mode));
}

void BitserialLinear::forward(const float* x, std::int64_t n, float* out, const char* isa,
                              int num_threads) {
  if (n < 1) throw std::invalid_argument("BitserialLinear: batch must be >= 1");
  std::lock_guard<std::mutex> lock(scratch_mutex_);
  const std::int64_t k = weights_.k;
  const std::int64_t words = words_per_plane(k);
  const std::size_t need = static_cast<std::size_t>((n * act_bits_ + kPlaneRowPad) * words);
  if (planes_.size() < need) planes_.resize(need);
  if (static_cast<std::int64_t>(offsets_.size()) != n + 1) {
    offsets_.resize(static_cast<std::size_t>(n + 1));
    for (std::int64_t r = 0; r <= n; ++r) offsets_[r] = r * act_bits_;
    sums_.resize(static_cast<std::size_t>(n));
    act_scales_.assign(static_cast<std::size_t>(n), act_scale_);
  }
  const std::int64_t nonfinite =
      quantize_pack_bit_planes(x, &act_scale_, 0, n, k, act_bits_, act_mode_, planes_.data(),
                               sums_.data(), isa, num_threads);
  if (nonfinite)
    throw std::invalid_argument("BitserialLinear: the input has " + std::to_string(nonfinite) +
                                " NaN or infinite entries");
  BitPlanesView act;
  act.planes = planes_.data();
  act.plane_offsets = offsets_.data();
  act.row_sums = sums_.data();
  act.rows = n;
  act.k = k;
  act.words = words;
  act.mode = act_mode_;
  GemmOutput o;
  o.out = out;
  o.row_scale = row_scale_;
  o.act_scale = act_scales_.data();
  o.bias = bias_;
  bitserial_gemm(act, weights_, o, isa, num_threads, &terms_);
}

}  // namespace bayesq
