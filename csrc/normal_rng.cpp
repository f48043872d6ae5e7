// Run-time ISA choice and threading for normal_fill. Threads take contiguous ranges of pairs and
// rebuild the same counter sequence, so the output does not depend on the thread count.
#include <algorithm>
#include <stdexcept>
#include <vector>

#include "bayesq_common.h"
#include "normal_rng.h"
#include "thread_pool.h"

namespace bayesq {

namespace {

using FillVariant = void (*)(float*, std::size_t, std::uint64_t);

FillVariant choose(const char* isa) {
  switch (resolve_isa(isa)) {
    case Isa::kAvx512: return normal_fill_avx512;
    case Isa::kAvx2: return normal_fill_avx2;
    default: return normal_fill_portable;
  }
}

constexpr std::size_t kMinPairsPerThread = 65536;

}  // namespace

void normal_fill(float* out, std::size_t n, std::uint64_t seed, const char* isa, int num_threads) {
  const FillVariant fill = choose(isa);
  const std::size_t pairs = n / 2;
  std::size_t threads = num_threads < 1 ? 1 : static_cast<std::size_t>(num_threads);
  threads = std::min(threads, std::max<std::size_t>(1, pairs / kMinPairsPerThread));
  if (threads == 1) {
    fill(out, n, seed);
    return;
  }
  // A thread filling pairs [a, b) writes out[a, b) and out[pairs + a, pairs + b); the variants
  // lay a block of m pairs out the same way, so each thread fills a scratch block of 2m values
  // whose halves are copied into place. Pair a has SplitMix64 state seed + (a + 1) * golden,
  // which is what a block started at seed + a * golden produces as its pair 0.
  constexpr std::uint64_t kGolden = 0x9e3779b97f4a7c15ull;
  // Blocks start on multiples of 16 pairs: the vector loop then covers the same pairs in every
  // thread split (its scalar remainder, which rounds differently in the last bit, stays at the end).
  const std::size_t per = ((pairs + threads - 1) / threads + 15) / 16 * 16;
  auto work = [&](std::size_t t) {
    const std::size_t a = std::min(pairs, t * per), b = std::min(pairs, a + per);
    std::vector<float> block(2 * (b - a));
    fill(block.data(), block.size(), seed + a * kGolden);
    std::copy(block.begin(), block.begin() + (b - a), out + a);
    std::copy(block.begin() + (b - a), block.end(), out + pairs + a);
  };
  parallel_for(static_cast<int>(threads), [&](int t) { work(static_cast<std::size_t>(t)); });
  if (n % 2) {  // the odd last value, exactly as the single-threaded fill makes it
    float tail[3];
    fill(tail, 3, seed + pairs * kGolden);  // its pair 0 is pair `pairs` of the full sequence
    out[n - 1] = tail[0];
  }
}

namespace {

// Splits the pairs [0, n/2) of an LRT pass over `threads` pool threads, in blocks that start on
// multiples of 16 pairs (so the vector loops cover the same pairs whatever the split, as in
// normal_fill); the block holding the last pair also does the odd tail. The result does not
// depend on the thread count.
template <class Range>
void split_pairs(std::size_t n, int num_threads, Range range) {
  const std::size_t pairs = n / 2;
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

void lrt_sample(const float* mean, const float* var, float* out, float* dout_dvar, std::size_t n,
                std::uint64_t seed, float floor, const char* isa, int num_threads) {
  auto variant = lrt_sample_portable;
  switch (resolve_isa(isa)) {
    case Isa::kAvx512: variant = lrt_sample_avx512; break;
    case Isa::kAvx2: variant = lrt_sample_avx2; break;
    default: break;
  }
  split_pairs(n, num_threads, [&](std::size_t a, std::size_t b, bool tail) {
    variant(mean, var, out, dout_dvar, n, seed, floor, a, b, tail);
  });
}

}  // namespace bayesq
