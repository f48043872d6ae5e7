// The direct GEMM (direct_gemm.h): packing, the portable reference and the split across threads.
#include "runner/direct_gemm.h"

#include <algorithm>
#include <string>
#include <stdexcept>

#include "common/bayesq_common.h"
#include "common/thread_pool.h"

namespace bayesq {

DirectWeights pack_direct(const std::int8_t* codes, std::int64_t n, std::int64_t k) {
  if (n < 1 || k < 1) throw std::invalid_argument("pack_direct: n and k must be >= 1");
  DirectWeights w;
  w.n = n;
  w.k = k;
  w.groups = direct_padded_k(k) / 4;
  w.chunks = (n + kDirectLanes - 1) / kDirectLanes;
  w.packed.assign(static_cast<std::size_t>(w.chunks * w.groups * 64), 0);
  w.corr.assign(static_cast<std::size_t>(w.chunks * kDirectLanes), 0);
  for (std::int64_t r = 0; r < n; ++r) {
    const std::int64_t c = r / kDirectLanes, j = r % kDirectLanes;
    std::int32_t sum = 0;
    for (std::int64_t t = 0; t < k; ++t) {
      w.packed[static_cast<std::size_t>((c * w.groups + t / 4) * 64 + 4 * j + t % 4)] = codes[r * k + t];
      sum += codes[r * k + t];
    }
    w.corr[static_cast<std::size_t>(r)] = 128 * sum;
  }
  return w;
}

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
      acc += a * w.packed[static_cast<std::size_t>((c * w.groups + t / 4) * 64 + 4 * j + t % 4)];
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
                 const DirectWeights& w, const DirectEpilogue& e, float* out, bool portable,
                 int num_threads, bool pool4) {
  if (x_stride < w.groups * 4) throw std::invalid_argument("direct_gemm: x_stride < padded k");
  if (pool4 && m % 4 != 0) throw std::invalid_argument("direct_gemm: pool4 needs whole windows");
  if (!portable && !direct_gemm_available())
    throw std::invalid_argument("direct_gemm: this CPU has no AVX-512 VNNI");
  if (m < 1) return;
  // one thread per at least ~1M multiply-adds, whole tiles of 4 rows each
  const std::int64_t macs = m * w.chunks * kDirectLanes * w.groups * 4;
  const std::int64_t by_work = std::max<std::int64_t>(1, macs >> 20);
  const int threads = static_cast<int>(
      std::min<std::int64_t>({std::max(1, num_threads), by_work, (m + 3) / 4}));
  const auto rows = [&](std::int64_t m0, std::int64_t m1) {
    if (portable)
      direct_rows_portable(x, m0, m1, x_stride, is_signed, w, e, out, pool4);
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

}  // namespace bayesq
