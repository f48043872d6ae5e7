// normal_fill, avx512 variant (compile flags in CMakeLists.txt).
#define BAYESQ_RNG_FUNCTION normal_fill_avx512_impl
#include "normal_rng_body.h"

namespace bayesq {
void normal_fill_avx512(float* out, std::size_t n, std::uint64_t seed) {
  normal_fill_avx512_impl(out, n, seed);
}
}  // namespace bayesq
