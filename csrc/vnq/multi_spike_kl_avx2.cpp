// AVX2 + FMA variant; compiled with -mavx2 -mfma, called only when the CPU reports AVX2.
#define BAYESQ_KL_FUNCTION kl_avx2_impl
#include "vnq/multi_spike_kl_body.h"

namespace bayesq {
std::size_t multi_spike_kl_avx2(const MultiSpikeKLArgs& args) { return kl_avx2_impl(args); }
}  // namespace bayesq
