// normal_fill, portable variant: baseline x86-64 (compile flags in CMakeLists.txt).
#define BAYESQ_RNG_FUNCTION normal_fill_portable_impl
#include "normal_rng_body.h"

namespace bayesq {
void normal_fill_portable(float* out, std::size_t n, std::uint64_t seed) {
  normal_fill_portable_impl(out, n, seed);
}
}  // namespace bayesq
