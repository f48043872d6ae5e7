// Run-time choice among the ISA variants of multi_spike_kl.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "common/bayesq_common.h"
#include "vnq/multi_spike_kl.h"

#include "common/thread_pool.h"

namespace bayesq {

namespace {

using KLVariant = std::size_t (*)(const MultiSpikeKLArgs&);

KLVariant choose(const char* isa) {
  switch (resolve_isa(isa)) {
    case Isa::kAvx512: return multi_spike_kl_avx512;
    case Isa::kAvx2: return multi_spike_kl_avx2;
    default: return multi_spike_kl_portable;
  }
}

// Below this many weights per thread, handing a slice to a pool worker costs more than it saves.
constexpr std::size_t kMinWeightsPerThread = 32768;

}  // namespace

std::size_t multi_spike_kl(const MultiSpikeKLArgs& args, const char* isa, int num_threads) {
  const KLVariant variant = choose(isa);
  std::size_t threads = num_threads < 1 ? 1 : static_cast<std::size_t>(num_threads);
  threads = std::min(threads, std::max<std::size_t>(1, args.n / kMinWeightsPerThread));
  if (threads == 1) return variant(args);
  // Slices start on multiples of 16 floats (64 bytes), so no two threads share a cache line.
  const std::size_t per = ((args.n + threads - 1) / threads + 15) / 16 * 16;
  std::vector<std::size_t> non_finite(threads, 0);
  parallel_for(static_cast<int>(threads), [&](int t) {
    const std::size_t begin = std::min(args.n, static_cast<std::size_t>(t) * per);
    MultiSpikeKLArgs slice = args;
    slice.theta += begin;
    slice.log_sigma2 += begin;
    slice.kl += begin;
    slice.grad_theta += begin;
    slice.grad_log_sigma2 += begin;
    slice.grad_scale += begin;
    slice.n = std::min(args.n, begin + per) - begin;
    non_finite[t] = variant(slice);
  });
  std::size_t total = 0;
  for (std::size_t v : non_finite) total += v;
  return total;
}

}  // namespace bayesq
