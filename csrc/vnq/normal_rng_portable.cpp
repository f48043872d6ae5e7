// The noise kernels (normal_fill, lrt_sample), portable variant; compile flags in CMakeLists.txt.
#define BAYESQ_VARIANT(name) name##_portable_impl
#include "vnq/normal_rng_body.h"

namespace bayesq {
void normal_fill_portable(float* out, std::size_t n, std::uint64_t seed, std::size_t j0,
                      std::size_t j1, bool tail) {
  normal_fill_portable_impl(out, n, seed, j0, j1, tail);
}
bool lrt_sample_portable(const float* mean, const float* var, float* out, float* dout_dvar,
                     std::size_t n, std::uint64_t seed, float floor, std::size_t j0,
                     std::size_t j1, bool tail) {
  return lrt_sample_portable_impl(mean, var, out, dout_dvar, n, seed, floor, j0, j1, tail);
}
}  // namespace bayesq
