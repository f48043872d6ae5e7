// Run-time ISA choice and threading of the noise kernels. Threads take contiguous ranges of pairs
// of the counter-based sequence, so the output does not depend on the thread count.
#include <algorithm>
#include <atomic>
#include <stdexcept>

#include "common/bayesq_common.h"
#include "vnq/normal_rng.h"
#include "common/thread_pool.h"

namespace bayesq {

namespace {

constexpr std::size_t kMinPairsPerThread = 65536;

// Splits the pairs [0, n/2) of a noise pass over `threads` pool threads, in blocks that start on
// multiples of 16 pairs: the vector loops then cover the same pairs whatever the split (their
// scalar remainder, which may round differently in the last bit, stays at the end). The block
// holding the last pair also does the odd tail. The result does not depend on the thread count.
template <class Range>
void split_pairs(std::size_t n, int num_threads, Range range) {
  const std::size_t pairs = n / 2;
  if (pairs > kMaxNoisePairs) throw std::invalid_argument("noise: more than 2^33 values");
  std::size_t threads = num_threads < 1 ? 1 : static_cast<std::size_t>(num_threads);
  threads = std::min(threads, std::max<std::size_t>(1, pairs / kMinPairsPerThread));
  const std::size_t per = ((pairs + threads - 1) / threads + 15) / 16 * 16;
  parallel_for(static_cast<int>(threads), [&](int t) {
    const std::size_t a = std::min(pairs, static_cast<std::size_t>(t) * per);
    const std::size_t b = std::min(pairs, a + per);
    range(a, b, b == pairs);
  });
}

}  // namespace

void normal_fill(float* out, std::size_t n, std::uint64_t seed, const char* isa, int num_threads) {
  auto variant = normal_fill_portable;
  switch (resolve_isa(isa)) {
    case Isa::kAvx512: variant = normal_fill_avx512; break;
    case Isa::kAvx2: variant = normal_fill_avx2; break;
    default: break;
  }
  split_pairs(n, num_threads, [&](std::size_t a, std::size_t b, bool tail) {
    variant(out, n, seed, a, b, tail);
  });
}

bool lrt_sample(const float* mean, const float* var, float* out, float* dout_dvar, std::size_t n,
                std::uint64_t seed, float floor, const char* isa, int num_threads) {
  auto variant = lrt_sample_portable;
  switch (resolve_isa(isa)) {
    case Isa::kAvx512: variant = lrt_sample_avx512; break;
    case Isa::kAvx2: variant = lrt_sample_avx2; break;
    default: break;
  }
  std::atomic<bool> invalid{false};
  split_pairs(n, num_threads, [&](std::size_t a, std::size_t b, bool tail) {
    if (variant(mean, var, out, dout_dvar, n, seed, floor, a, b, tail))
      invalid.store(true, std::memory_order_relaxed);
  });
  return invalid.load();
}

}  // namespace bayesq
