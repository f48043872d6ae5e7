// normal_fill, avx2 variant (compile flags in CMakeLists.txt).
#define BAYESQ_RNG_FUNCTION normal_fill_avx2_impl
#include "normal_rng_body.h"

namespace bayesq {
void normal_fill_avx2(float* out, std::size_t n, std::uint64_t seed) {
  normal_fill_avx2_impl(out, n, seed);
}
}  // namespace bayesq
