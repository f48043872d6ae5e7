// AVX-512 variant; compiled with -mavx512f -mavx512dq, called only when the CPU reports AVX-512F.
#define BAYESQ_KL_FUNCTION kl_avx512_impl
#include "vnq/multi_spike_kl_body.h"

namespace bayesq {
std::size_t multi_spike_kl_avx512(const MultiSpikeKLArgs& args) { return kl_avx512_impl(args); }
}  // namespace bayesq
