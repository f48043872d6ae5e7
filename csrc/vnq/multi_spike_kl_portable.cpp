// Portable variant: baseline x86-64 (SSE2) or whatever the compiler targets by default.
#define BAYESQ_KL_FUNCTION kl_portable_impl
#include "vnq/multi_spike_kl_body.h"

namespace bayesq {
std::size_t multi_spike_kl_portable(const MultiSpikeKLArgs& args) { return kl_portable_impl(args); }
}  // namespace bayesq
