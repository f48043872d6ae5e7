// Sparse ternary x 8-bit GEMM: the packer, the portable reference, the run-time ISA choice and
// the split of the work across threads (the kernels: sparse_ternary_avx2.cpp, _avx512.cpp).
#include "lowbit/sparse_ternary.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/bayesq_common.h"
#include "common/thread_pool.h"

namespace bayesq {

namespace {

// Below about this many additions (kept weights x activation rows) per thread, waking a pool
// worker costs more than it saves.
constexpr std::int64_t kMinAddsPerThread = std::int64_t(1) << 19;
// The panel is built and used a slab of activation rows at a time, of about this many bytes
// (1.25 MB: two 64-row tiles at K = 4096), so that it is still in L2 when it is used. Measured
// at N = K = 4096, batch 1024, 80 % zeros, one thread: 46 ms, against 50 ms with the whole
// batch's panel (8 MB) built first.
constexpr std::int64_t kPanelSlabBytes = std::int64_t(5) << 18;
// A single panel tile holds the whole K (kp x MT int16: 128 bytes per position on AVX-512);
// past this size (K of about 500 000) the gather form runs instead, whose buffers are a few
// bytes per position.
constexpr std::int64_t kPanelMaxBytes = std::int64_t(64) << 20;
// Panel buffers up to this size are kept by the calling thread between calls; a larger one
// is freed after the call.
constexpr std::int64_t kPanelKeptBytes = std::int64_t(4) << 20;

}  // namespace

void sparse_corrupt_counts() {
  throw std::invalid_argument(
      "sparse_ternary_gemm: the counts do not match the offsets stream (a hand-made array?)");
}

SparseIsa resolve_sparse_isa(const char* name) {
  const CpuFeatures& f = cpu_features();
  // VBMI (vpermi2b, the gather form) is only looked at here, so it is not in CpuFeatures.
  bool vbmi = false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  vbmi = __builtin_cpu_supports("avx512vbmi") != 0;
#endif
  const bool has512 = f.avx512f && f.avx512bw && f.avx512vl && vbmi;
  if (name == nullptr)
    return has512 ? SparseIsa::kAvx512 : f.avx2 ? SparseIsa::kAvx2 : SparseIsa::kPortable;
  if (std::strcmp(name, "portable") == 0) return SparseIsa::kPortable;
  if (std::strcmp(name, "avx2") == 0) {
    if (!f.avx2) throw std::invalid_argument("this CPU has no AVX2");
    return SparseIsa::kAvx2;
  }
  if (std::strcmp(name, "avx512") == 0) {
    if (!has512) throw std::invalid_argument("this CPU has no AVX-512 F/BW/VL + VBMI");
    return SparseIsa::kAvx512;
  }
  throw std::invalid_argument("isa must be 'portable', 'avx2' or 'avx512'");
}

const char* sparse_isa_name(SparseIsa isa) {
  switch (isa) {
    case SparseIsa::kAvx512: return "avx512";
    case SparseIsa::kAvx2: return "avx2";
    default: return "portable";
  }
}

namespace {

// Walks the codes (rows x k) once: per (row, block) the numbers of +1s and -1s, to f(n, b,
// plus, minus). Throws on a code outside {-1, 0, 1}.
template <class F>
void for_each_row_block(const std::int8_t* codes, std::int64_t rows, std::int64_t k, F f) {
  if (k < 1 || k > kSparseMaxK)
    throw std::invalid_argument("pack_sparse_ternary: k must lie in 1.." +
                                std::to_string(kSparseMaxK));
  if (rows < 0) throw std::invalid_argument("pack_sparse_ternary: negative rows");
  for (std::int64_t n = 0; n < rows; ++n)
    for (std::int64_t b = 0; b < sparse_blocks(k); ++b) {
      std::int64_t plus = 0, minus = 0;
      for (std::int64_t t = b * kSparseBlock; t < std::min(k, (b + 1) * kSparseBlock); ++t) {
        const int w = codes[n * k + t];
        if (w < -1 || w > 1)
          throw std::invalid_argument("pack_sparse_ternary: a code is not -1, 0 or 1");
        plus += w == 1;
        minus += w == -1;
      }
      f(n, b, plus, minus);
    }
}

}  // namespace

std::int64_t sparse_ternary_stream_bytes(const std::int8_t* codes, std::int64_t rows,
                                         std::int64_t k) {
  std::int64_t bytes = 0;
  for_each_row_block(codes, rows, k, [&](std::int64_t, std::int64_t, std::int64_t plus,
                                         std::int64_t minus) { bytes += 2 * std::max(plus, minus); });
  return bytes;
}

void pack_sparse_ternary(const std::int8_t* codes, std::int64_t rows, std::int64_t k,
                         std::uint8_t* offsets, std::uint8_t* counts, std::int64_t* starts,
                         std::int32_t* row_sums) {
  const std::int64_t blocks = sparse_blocks(k), groups = sparse_groups(rows);
  // counts first (this pass also checks every code), then each group's stream in its order
  std::memset(counts, 0, static_cast<std::size_t>(sparse_counts_size(rows, k)));
  for_each_row_block(codes, rows, k, [&](std::int64_t n, std::int64_t b, std::int64_t plus,
                                         std::int64_t minus) {
    const std::int64_t g = n / kSparseRowGroup, r = n % kSparseRowGroup;
    counts[(g * blocks + b) * kSparseRowGroup + r] = static_cast<std::uint8_t>(std::max(plus, minus));
  });
  std::uint8_t* s = offsets;
  std::vector<std::uint8_t> plus, minus;
  for (std::int64_t g = 0; g < groups; ++g) {
    starts[g] = s - offsets;
    for (std::int64_t b = 0; b < blocks; ++b)
      for (std::int64_t r = 0; r < kSparseRowGroup; ++r) {
        const std::int64_t n = g * kSparseRowGroup + r;
        const std::int64_t pairs = counts[(g * blocks + b) * kSparseRowGroup + r];
        if (pairs == 0) continue;
        plus.assign(static_cast<std::size_t>(pairs), kSparseSentinel);
        minus.assign(static_cast<std::size_t>(pairs), kSparseSentinel);
        std::size_t np = 0, nm = 0;
        for (std::int64_t t = b * kSparseBlock; t < std::min(k, (b + 1) * kSparseBlock); ++t) {
          const int w = codes[n * k + t];
          const auto offset = static_cast<std::uint8_t>(t - b * kSparseBlock);
          if (w == 1) plus[np++] = offset;
          if (w == -1) minus[nm++] = offset;
        }
        for (std::int64_t i = 0; i < pairs; ++i) {
          *s++ = plus[i];
          *s++ = minus[i];
        }
      }
  }
  starts[groups] = s - offsets;
  std::memset(s, 0, static_cast<std::size_t>(kSparsePad));
  for (std::int64_t n = 0; n < rows; ++n) {
    std::int32_t sum = 0;
    for (std::int64_t t = 0; t < k; ++t) sum += codes[n * k + t];
    row_sums[n] = sum;
  }
}

// The reference: walks each group's stream and adds (subtracts) the caller's x at every +1
// (-1) offset of a pair, in int64, skipping sentinels. Positions past K (only a hand-made
// stream has them) count as x = 0.
void sparse_rect_portable(const SparseProblem& p, std::int64_t m0, std::int64_t m1,
                          std::int64_t g0, std::int64_t g1) {
  const std::int64_t k = p.w.k, blocks = sparse_blocks(k);
  std::vector<std::int64_t> y(static_cast<std::size_t>(kSparseRowGroup));
  for (std::int64_t m = m0; m < m1; ++m) {
    const std::uint8_t* xu = p.x + m * k;
    for (std::int64_t g = g0; g < g1; ++g) {
      std::fill(y.begin(), y.end(), 0);
      const std::uint8_t* s = p.w.offsets + p.w.starts[g];
      const std::uint8_t* end = p.w.offsets + p.w.starts[g + 1];
      const std::uint8_t* c = p.w.counts + g * blocks * kSparseRowGroup;
      for (std::int64_t b = 0; b < blocks; ++b)
        for (std::int64_t r = 0; r < kSparseRowGroup; ++r) {
          const std::int64_t pairs = *c++;
          sparse_check_pairs(pairs, s, end);
          for (std::int64_t i = 0; i < 2 * pairs; ++i) {
            const int offset = *s++;
            const std::int64_t t = b * kSparseBlock + offset;
            if (offset == kSparseSentinel || t >= k) continue;
            const std::int64_t xv = p.is_signed ? static_cast<std::int8_t>(xu[t]) : xu[t];
            y[r] += i % 2 == 0 ? xv : -xv;
          }
        }
      for (std::int64_t r = 0; r < kSparseRowGroup; ++r) {
        const std::int64_t n = g * kSparseRowGroup + r;
        if (n < p.w.rows) p.out[m * p.w.rows + n] = static_cast<std::int32_t>(y[r]);
      }
    }
  }
}

std::int64_t sparse_panel_min_m(const SparseTernaryView& w) {
  const std::int64_t lists = std::max<std::int64_t>(1, w.rows * sparse_blocks(w.k));
  return w.starts[sparse_groups(w.rows)] / 2 < 16 * lists ? 6 : 11;
}

bool sparse_running_form(const SparseTernaryView& w) {
  const std::int64_t lists = std::max<std::int64_t>(1, w.rows * sparse_blocks(w.k));
  return w.starts[sparse_groups(w.rows)] / 2 <= 8 * lists;
}

void sparse_ternary_gemm(const std::uint8_t* x, std::int64_t m, bool is_signed,
                         const SparseTernaryView& w, std::int32_t* out, const char* isa,
                         int num_threads) {
  if (w.k < 1 || w.k > kSparseMaxK)
    throw std::invalid_argument("sparse_ternary_gemm: k must lie in 1.." +
                                std::to_string(kSparseMaxK));
  if (m < 0 || w.rows < 0) throw std::invalid_argument("sparse_ternary_gemm: negative size");
  const SparseIsa chosen = resolve_sparse_isa(isa);
  if (m == 0 || w.rows == 0) return;
  SparseProblem p;
  p.x = x;
  p.is_signed = is_signed;
  p.m = m;
  p.w = w;
  p.out = out;
  using Rect = void (*)(const SparseProblem&, std::int64_t, std::int64_t, std::int64_t,
                        std::int64_t);
  using Panel = void (*)(const SparseProblem&, std::int64_t, std::int64_t);
  Rect rect = sparse_rect_portable;
  Panel panel = nullptr;
  if (chosen == SparseIsa::kAvx512) {
    rect = sparse_rect_avx512;
    panel = sparse_panel_avx512;
    p.tile = sparse_tile_rows_avx512(m);
  } else if (chosen == SparseIsa::kAvx2) {
    rect = sparse_rect_avx2;
    panel = sparse_panel_avx2;
    p.tile = sparse_tile_rows_avx2(m);
  }
  const bool use_panel = panel != nullptr && m >= sparse_panel_min_m(w) &&
                         sparse_padded_k(w.k) * 2 * p.tile <= kPanelMaxBytes;
  const std::int64_t groups = sparse_groups(w.rows);
  // additions: the stream's bytes (one per kept weight or sentinel) per activation row
  const double adds = static_cast<double>(std::max<std::int64_t>(w.starts[groups], groups)) * m;
  std::int64_t threads = std::max(1, num_threads);
  if (adds < static_cast<double>(threads) * kMinAddsPerThread)
    threads = std::max<std::int64_t>(1, static_cast<std::int64_t>(adds / kMinAddsPerThread));

  // The rows of x are taken a slab at a time (whole panel tiles); each slab's work is split
  // by row groups when every thread gets one (each then streams only its share of the
  // weights), otherwise by activation rows (whole tiles in the panel form).
  const std::int64_t tile = use_panel ? p.tile : 1;
  const std::int64_t kp = sparse_padded_k(w.k);
  const std::int64_t slab =
      use_panel ? std::max<std::int64_t>(1, kPanelSlabBytes / (kp * 2 * tile)) * tile : m;
  // The panel lives in a buffer of the calling thread that is kept between calls (up to
  // kPanelKeptBytes): a fresh allocation per call would be mapped and zeroed page by page by
  // the kernel each time. + 32 entries: room to start the panel on a 64-byte boundary (a panel
  // row is 64 or 128 bytes: an unaligned one would split every vector load across two lines).
  static thread_local std::vector<std::int16_t> kept_buf;
  std::vector<std::int16_t> own_buf;
  std::vector<std::int16_t>* panel_buf = &kept_buf;
  if (use_panel) {
    const auto size =
        static_cast<std::size_t>(std::min(slab, (m + tile - 1) / tile * tile) * kp + 32);
    if (static_cast<std::int64_t>(size) * 2 > kPanelKeptBytes) panel_buf = &own_buf;
    if (panel_buf->size() < size) panel_buf->resize(size);
  }
  std::int16_t* panel_start = panel_buf->data();
  while (reinterpret_cast<std::uintptr_t>(panel_start) % 64 != 0) ++panel_start;
  for (std::int64_t s0 = 0; s0 < m; s0 += slab) {
    const std::int64_t s1 = std::min(m, s0 + slab);
    const std::int64_t tiles = (s1 - s0 + tile - 1) / tile;
    SparseProblem q = p;
    q.x = x + s0 * w.k;
    q.m = s1 - s0;
    q.out = out + s0 * w.rows;
    if (use_panel) {
      q.panel = panel_start;
      const std::int64_t units = tiles * sparse_blocks(w.k);  // (tile, block) pairs
      const std::int64_t pt = std::min<std::int64_t>(threads, units);
      parallel_for(static_cast<int>(pt), [&](int t) {
        panel(q, units * t / pt, units * (t + 1) / pt);
      });
    }
    const bool split_groups = groups >= threads;
    const std::int64_t units = split_groups ? groups : tiles;
    const std::int64_t jobs = std::min<std::int64_t>(threads, units);
    parallel_for(static_cast<int>(jobs), [&](int t) {
      const std::int64_t lo = units * t / jobs, hi = units * (t + 1) / jobs;
      if (lo >= hi) return;
      if (split_groups)
        rect(q, 0, q.m, lo, hi);
      else
        rect(q, lo * tile, std::min(q.m, hi * tile), 0, groups);
    });
  }
}

}  // namespace bayesq
