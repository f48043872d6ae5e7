// The direct GEMM (direct_gemm.h): packing, the portable reference and the split across threads.
#include "runner/direct_gemm.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <string>
#include <stdexcept>

#include "common/bayesq_common.h"
#include "common/thread_pool.h"

#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

namespace bayesq {

namespace {

void pack_layout(const std::int8_t* codes, std::int64_t n, std::int64_t k, std::int64_t groups,
                 std::int64_t chunks, DirectAmxWeights& w) {
  w.n = n;
  w.k = k;
  w.groups = groups;
  w.chunks = chunks;
  w.packed.assign(static_cast<std::size_t>(chunks * groups * 64 + 64), 0);
  w.align = static_cast<std::int64_t>((64 - reinterpret_cast<std::uintptr_t>(w.packed.data()) % 64) % 64);
  w.corr.assign(static_cast<std::size_t>(chunks * kDirectLanes), 0);
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t c = r / kDirectLanes, j = r % kDirectLanes;
    std::int32_t sum = 0;
    for (std::int64_t t = 0; t < k; ++t) {
      w.packed[static_cast<std::size_t>(w.align + (c * groups + t / 4) * 64 + 4 * j + t % 4)] =
          codes[r * k + t];
      sum += codes[r * k + t];
    }
    w.corr[static_cast<std::size_t>(r)] = 128 * sum;
  }
}

}  // namespace

DirectWeights pack_direct(const std::int8_t* codes, std::int64_t n, std::int64_t k) {
  if (n < 1 || k < 1) throw std::invalid_argument("pack_direct: n and k must be >= 1");
  DirectWeights w;
  const std::int64_t chunks = (n + kDirectLanes - 1) / kDirectLanes;
  pack_layout(codes, n, k, direct_padded_k(k) / 4, chunks, w);
  for (std::int64_t t = 0; t < n * k; ++t)
    w.max_abs = std::max(w.max_abs, std::abs(std::int32_t{codes[t]}));
  if (direct_amx_available())
    pack_layout(codes, n, k, (k + 63) / 64 * 16, (chunks + 1) / 2 * 2, w.amx);
  return w;
}

bool direct_amx_available() {
  static const bool ready = [] {
    if (!direct_gemm_available()) return false;
#if defined(__x86_64__) && defined(__linux__)
    unsigned a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    const bool tile = (d >> 24) & 1, int8 = (d >> 25) & 1;
    if (!tile || !int8) return false;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(1), "c"(0));
    if (!((c >> 27) & 1)) return false;  // OSXSAVE: xgetbv may be used
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if (((lo >> 17) & 3) != 3) return false;  // XTILECFG and XTILEDATA enabled by the OS
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
  }();
  return ready;
}

bool direct_avx2_available() { return cpu_features().avx2; }

bool direct_gemm_available() {
  const CpuFeatures& f = cpu_features();
  return f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
}

namespace {

// The reference: each weight read back from the packed layout, int32 dot products of the codes
// as they are (no offset algebra), then the float32 scaling in the reference's order.
void direct_rows_portable(const std::uint8_t* x, std::int64_t m0, std::int64_t m1,
                          std::int64_t x_stride, bool is_signed, const DirectWeights& w,
                          const DirectEpilogue& e, float* out, bool pool4) {
  const auto dot = [&](std::int64_t m, std::int64_t r) {
    const std::uint8_t* row = x + m * x_stride;
    const std::int64_t c = r / kDirectLanes, j = r % kDirectLanes;
    std::int32_t acc = 0;
    for (std::int64_t t = 0; t < w.k; ++t) {
      const std::int32_t a = is_signed ? static_cast<std::int8_t>(row[t]) : row[t];
      acc += a * w.data()[(c * w.groups + t / 4) * 64 + 4 * j + t % 4];
    }
    return acc;
  };
  const std::int64_t step = pool4 ? 4 : 1;
  for (std::int64_t m = m0; m < m1; m += step) {
    for (std::int64_t r = 0; r < w.n; ++r) {
      std::int32_t acc = dot(m, r);
      for (std::int64_t i = 1; i < step; ++i) {  // the window's extreme integer (see the header)
        const std::int32_t other = dot(m + i, r);
        acc = e.row_scale[r] >= 0.0f ? std::max(acc, other) : std::min(acc, other);
      }
      float v = static_cast<float>(acc) * e.row_scale[r];
      v = v * e.act_scale;
      out[m / step * w.n + r] = v + e.bias[r];
    }
  }
}

}  // namespace

void direct_gemm(const std::uint8_t* x, std::int64_t m, std::int64_t x_stride, bool is_signed,
                 const DirectWeights& w, const DirectEpilogue& e, float* out, DirectPath path,
                 int num_threads, bool pool4, int act_max) {
  if (x_stride < w.groups * 4) throw std::invalid_argument("direct_gemm: x_stride < padded k");
  if (pool4 && m % 4 != 0) throw std::invalid_argument("direct_gemm: pool4 needs whole windows");
  if (act_max < 1 || act_max > 255) throw std::invalid_argument("direct_gemm: act_max outside 1..255");
  if (path == DirectPath::kVnni && !direct_gemm_available())
    throw std::invalid_argument("direct_gemm: this CPU has no AVX-512 VNNI");
  if (path == DirectPath::kAmx && w.amx.packed.empty())
    throw std::invalid_argument("direct_gemm: this CPU (or OS) does not run AMX-INT8");
  const std::int64_t steps = direct_avx2_steps(act_max, w.max_abs);
  if (path == DirectPath::kAvx2 && !direct_avx2_available())
    throw std::invalid_argument("direct_gemm: this CPU has no AVX2");
  if (path == DirectPath::kAvx2 && steps < 1)
    throw std::invalid_argument("direct_gemm: the AVX2 path's 16-bit sums could saturate "
                                "(2 * act_max * max|w| > 32767)");
  if (m < 1) return;
  const bool amx_pays = m >= kDirectAmxMinRows && w.k >= kDirectAmxMinK && !w.amx.packed.empty();
  if (path == DirectPath::kAmx || (path == DirectPath::kBest && amx_pays)) {
    direct_gemm_amx(x, m, x_stride, is_signed, w, e, out, num_threads, pool4);
    return;
  }
  if (path == DirectPath::kBest)
    path = direct_gemm_available()                      ? DirectPath::kVnni
           : direct_avx2_available() && steps >= 1 ? DirectPath::kAvx2
                                                        : DirectPath::kPortable;
  // one thread per at least ~1M multiply-adds, whole tiles of 4 rows each
  const std::int64_t macs = m * w.chunks * kDirectLanes * w.groups * 4;
  const std::int64_t by_work = std::max<std::int64_t>(1, macs >> 20);
  const int threads = static_cast<int>(
      std::min<std::int64_t>({std::max(1, num_threads), by_work, (m + 3) / 4}));
  const auto rows = [&](std::int64_t m0, std::int64_t m1) {
    if (path == DirectPath::kPortable)
      direct_rows_portable(x, m0, m1, x_stride, is_signed, w, e, out, pool4);
    else if (path == DirectPath::kAvx2)
      direct_rows_avx2(x, m0, m1, x_stride, is_signed, w, e, out, pool4, steps);
    else
      direct_rows_avx512vnni(x, m0, m1, x_stride, is_signed, w, e, out, pool4);
  };
  if (threads <= 1) {
    rows(0, m);
    return;
  }
  const std::int64_t tiles = (m + 3) / 4;
  parallel_for(threads, [&](int t) {
    const std::int64_t m0 = std::min(m, tiles * t / threads * 4);
    const std::int64_t m1 = std::min(m, tiles * (t + 1) / threads * 4);
    if (m0 < m1) rows(m0, m1);
  });
}

void direct_gemm_amx(const std::uint8_t* x, std::int64_t m, std::int64_t x_stride,
                     bool is_signed, const DirectWeights& w, const DirectEpilogue& e, float* out,
                     int num_threads, bool pool4) {
  // The tiles read rows of whole 64-byte K tiles in blocks of 32 rows, as u8: a copy of x in
  // that form (O(m k) against the product's O(m n k)), kept per calling thread between calls.
  // (+ 64: rows a multiple of 1 KB apart would fall into the same few L1 sets)
  const std::int64_t stride = w.amx.groups * 4 + 64, blocks = (m + 31) / 32;
  // 64-byte aligned: a tile row is then one cache line, not two
  static thread_local std::vector<std::uint8_t> buffer;
  if (buffer.size() < static_cast<std::size_t>(blocks * 32 * stride + 128))
    buffer.resize(static_cast<std::size_t>(blocks * 32 * stride + 128));
  std::uint8_t* tiles = buffer.data() + (64 - reinterpret_cast<std::uintptr_t>(buffer.data()) % 64);
  const std::uint8_t flip = is_signed ? 0x80 : 0x00;  // u = x + 128 is x XOR 0x80
  for (std::int64_t r = 0; r < blocks * 32; ++r) {
    std::uint8_t* dst = tiles + r * stride;
    std::int64_t t = 0;
    if (r < m)
      for (const std::uint8_t* src = x + r * x_stride; t < w.k; ++t) dst[t] = src[t] ^ flip;
    std::memset(dst + t, 0, static_cast<std::size_t>(stride - t));
  }
  const std::uint8_t* rows = tiles;  // (a worker thread's `buffer` is its own, empty one)
  const int threads = static_cast<int>(std::min<std::int64_t>(std::max(1, num_threads), blocks));
  parallel_for(threads, [&](int t) {
    const std::int64_t m0 = blocks * t / threads * 32;
    const std::int64_t m1 = std::min(m, blocks * (t + 1) / threads * 32);
    if (m0 < m1) direct_rows_amx(rows, m0, m1, stride, is_signed, w.amx, e, out, pool4);
  });
}

}  // namespace bayesq
