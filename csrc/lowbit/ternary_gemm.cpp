// Ternary x 8-bit GEMM: the packer, the portable reference, the run-time ISA choice and the
// split of the outputs across threads (the VNNI kernels: ternary_gemm_avx{512,}vnni{,_gfni}.cpp;
// the AVX2 one: ternary_gemm_avx2.cpp; the AMX one: ternary_gemm_amx.cpp).
#include "lowbit/ternary_gemm.h"

#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include "common/bayesq_common.h"
#include "common/thread_pool.h"

namespace bayesq {

namespace {

using RectVariant = void (*)(const TernaryProblem&, std::int64_t, std::int64_t, std::int64_t,
                             std::int64_t);

// Below about this many multiply-adds per thread, waking a pool worker costs more than it saves.
constexpr std::int64_t kMinMacsPerThread = std::int64_t(1) << 21;
// Weight rows are split across threads in multiples of this (the kernels' register tile).
constexpr std::int64_t kRowGrain = 8;

// Whether AMX-INT8 can run here: the CPU has AMX-TILE and AMX-INT8 (CPUID.(7,0):EDX bits 24,
// 25), the OS saves the tile state (XCR0 bits 17 XTILECFG and 18 XTILEDATA, read only when
// CPUID.1:ECX.OSXSAVE says xgetbv exists), and on Linux the process got the permission to use
// the tile data (arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA), kernel 5.16+; without it
// the first tile instruction kills the process with SIGILL). Asked once, thread-safely (a
// function-local static); the permission is per process, so it covers every pool worker.
bool amx_usable() {
  static const bool usable = [] {
#if defined(__x86_64__)
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE
    if (__get_cpuid_max(0, nullptr) < 7) return false;
    __cpuid_count(7, 0, a, b, c, d);
    if (!(d & (1u << 24)) || !(d & (1u << 25))) return false;  // AMX-TILE, AMX-INT8
    unsigned xcr0_lo = 0, xcr0_hi = 0;
    __asm__ volatile("xgetbv" : "=a"(xcr0_lo), "=d"(xcr0_hi) : "c"(0));
    if ((xcr0_lo & (3u << 17)) != (3u << 17)) return false;
#if defined(__linux__)
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) != 0) return false;
#endif
    return true;
#else
    return false;
#endif
  }();
  return usable;
}

}  // namespace

TernaryIsa resolve_ternary_isa(const char* name) {
  const CpuFeatures& f = cpu_features();
  const bool has512 = f.avx512f && f.avx512bw && f.avx512vl && f.avx512vnni;
  const bool has256 = f.avx2 && f.avxvnni;
  // GFNI is only looked at here (no other kernel uses it), so it is not in CpuFeatures.
  bool gfni = false;
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  gfni = __builtin_cpu_supports("gfni") != 0;
#endif
  // the AMX kernel expands weights and rearranges activations with AVX-512 F/BW/VL
  const bool amx = has512 && amx_usable();
  if (name == nullptr)
    return amx            ? TernaryIsa::kAmx
           : has512 && gfni ? TernaryIsa::kAvx512VnniGfni
           : has512       ? TernaryIsa::kAvx512Vnni
           : has256       ? TernaryIsa::kAvxVnni
           : f.avx2       ? TernaryIsa::kAvx2
                          : TernaryIsa::kPortable;
  if (std::strcmp(name, "portable") == 0) return TernaryIsa::kPortable;
  if (std::strcmp(name, "avx2") == 0) {
    if (!f.avx2) throw std::invalid_argument("this CPU has no AVX2");
    return TernaryIsa::kAvx2;
  }
  if (std::strcmp(name, "avxvnni") == 0) {
    if (!has256) throw std::invalid_argument("this CPU has no AVX2 + AVX-VNNI");
    return TernaryIsa::kAvxVnni;
  }
  if (std::strcmp(name, "avx512vnni") == 0) {
    if (!has512) throw std::invalid_argument("this CPU has no AVX-512 F/BW/VL + VNNI");
    return TernaryIsa::kAvx512Vnni;
  }
  if (std::strcmp(name, "avx512vnni_gfni") == 0) {
    if (!(has512 && gfni)) throw std::invalid_argument("this CPU has no AVX-512 VNNI + GFNI");
    return TernaryIsa::kAvx512VnniGfni;
  }
  if (std::strcmp(name, "amx") == 0) {
    if (!amx)
      throw std::invalid_argument(
          "this CPU (or OS) gives no AMX-TILE + AMX-INT8 (with AVX-512 F/BW/VL + VNNI)");
    return TernaryIsa::kAmx;
  }
  throw std::invalid_argument(
      "isa must be 'portable', 'avx2', 'avxvnni', 'avx512vnni', 'avx512vnni_gfni' or 'amx'");
}

TernaryIsa ternary_best_isa(std::int64_t m) {
  const TernaryIsa best = resolve_ternary_isa(nullptr);
  if (best != TernaryIsa::kAmx || m >= kTernaryAmxMinRows) return best;
  // the best VNNI path (AMX is only taken with AVX-512 VNNI; GFNI is on every AMX CPU so far)
  try {
    return resolve_ternary_isa("avx512vnni_gfni");
  } catch (const std::invalid_argument&) {
    return TernaryIsa::kAvx512Vnni;
  }
}

const char* ternary_isa_name(TernaryIsa isa) {
  switch (isa) {
    case TernaryIsa::kAmx: return "amx";
    case TernaryIsa::kAvx512VnniGfni: return "avx512vnni_gfni";
    case TernaryIsa::kAvx512Vnni: return "avx512vnni";
    case TernaryIsa::kAvxVnni: return "avxvnni";
    case TernaryIsa::kAvx2: return "avx2";
    default: return "portable";
  }
}

void pack_ternary(const std::int8_t* codes, std::int64_t rows, std::int64_t k,
                  std::uint8_t* out_codes, std::int32_t* row_sums) {
  if (k < 1 || k > kTernaryMaxK)
    throw std::invalid_argument("pack_ternary: k must lie in 1.." + std::to_string(kTernaryMaxK));
  // padding codes and padding rows are 0
  std::memset(out_codes, 0, static_cast<std::size_t>(ternary_packed_bytes(rows, k)));
  TernaryWeightsView v;
  v.rows = rows;
  v.k = k;
  v.codes = out_codes;
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::int8_t* src = codes + r * k;
    std::uint8_t* dst = out_codes + (v.row(r) - out_codes);
    std::int32_t sum = 0;
    for (std::int64_t t = 0; t < k; ++t) {
      const int w = src[t];
      if (w < -1 || w > 1) throw std::invalid_argument("pack_ternary: a code is not -1, 0 or 1");
      sum += w;
      const std::int64_t block = t / kTernaryBlock, in_block = t % kTernaryBlock;
      const int q = static_cast<int>(in_block / 64);
      dst[block * kTernaryBlockStride + in_block % 64] |= static_cast<std::uint8_t>((w + 1) << (2 * q));
    }
    row_sums[r] = sum;
  }
}

// The reference: decodes every weight from the packed bytes and multiplies the caller's own
// activations, in int32 (exact: |x . w| <= 255 K < 2^31).
void ternary_rect_portable(const TernaryProblem& p, std::int64_t m0, std::int64_t m1,
                           std::int64_t n0, std::int64_t n1) {
  const std::int64_t k = p.w.k;
  std::vector<std::int32_t> x(static_cast<std::size_t>(k)), w(static_cast<std::size_t>(k));
  for (std::int64_t n = n0; n < n1; ++n) {
    const std::uint8_t* row = p.w.row(n);
    for (std::int64_t t = 0; t < k; ++t) {
      const std::int64_t block = t / kTernaryBlock, in_block = t % kTernaryBlock;
      const int q = static_cast<int>(in_block / 64);
      w[t] = ((row[block * kTernaryBlockStride + in_block % 64] >> (2 * q)) & 3) - 1;
    }
    for (std::int64_t m = m0; m < m1; ++m) {
      for (std::int64_t t = 0; t < k; ++t)
        x[t] = p.x_signed ? p.x_signed[m * k + t] : p.x_unsigned[m * k + t];
      std::int32_t acc = 0;
      for (std::int64_t t = 0; t < k; ++t) acc += x[t] * w[t];
      p.out[m * p.w.rows + n] = acc;
    }
  }
}

void ternary_gemm(const std::uint8_t* x, std::int64_t m, bool is_signed,
                  const TernaryWeightsView& w, std::int32_t* out, const char* isa,
                  int num_threads) {
  if (w.k < 1 || w.k > kTernaryMaxK)
    throw std::invalid_argument("ternary_gemm: k must lie in 1.." + std::to_string(kTernaryMaxK));
  if (m < 0 || w.rows < 0) throw std::invalid_argument("ternary_gemm: negative size");
  const TernaryIsa chosen = isa == nullptr ? ternary_best_isa(m) : resolve_ternary_isa(isa);
  if (m == 0 || w.rows == 0) return;
  RectVariant rect = ternary_rect_portable;
  if (chosen == TernaryIsa::kAmx) rect = ternary_rect_amx;
  if (chosen == TernaryIsa::kAvx512VnniGfni) rect = ternary_rect_avx512vnni_gfni;
  if (chosen == TernaryIsa::kAvx512Vnni) rect = ternary_rect_avx512vnni;
  if (chosen == TernaryIsa::kAvxVnni) rect = ternary_rect_avxvnni;
  if (chosen == TernaryIsa::kAvx2) rect = ternary_rect_avx2;

  const std::int64_t k = w.k, kp = ternary_padded_k(k);
  TernaryProblem p;
  p.m = m;
  p.kp = kp;
  p.w = w;
  p.out = out;
  if (is_signed)
    p.x_signed = reinterpret_cast<const std::int8_t*>(x);
  else
    p.x_unsigned = x;

  // In double: m * rows * kp may pass 2^63 for absurd shapes; only its order of magnitude counts.
  const double macs = static_cast<double>(m) * static_cast<double>(w.rows) * static_cast<double>(kp);
  std::int64_t threads = std::max(1, num_threads);
  if (macs < static_cast<double>(threads) * kMinMacsPerThread)
    threads = std::max<std::int64_t>(1, static_cast<std::int64_t>(macs / kMinMacsPerThread));

  // The buffers are kept per calling thread between calls: at batch 256 a convolution's rows
  // take tens of MB, which a fresh allocation would page-fault in on every call. (Workers reach
  // them through p, never by name: a worker's own thread_local copies are empty.)
  static thread_local std::vector<std::uint8_t> act, amx_act;
  static thread_local std::vector<std::uint32_t> act_sums, w_corr;
  if (chosen == TernaryIsa::kAmx) {
    // The activations rearranged for the tiles (ternary_gemm.h, ternary_prepare_amx), in whole
    // tiles of 16 rows (the last one padded with zero rows), the threads sharing the tiles.
    // (Not zeroed first: ternary_prepare_amx writes every byte of every tile.)
    const std::int64_t tiles = (m + 15) / 16;
    if (amx_act.size() < static_cast<std::size_t>(tiles * 16 * kp + 64))
      amx_act.resize(static_cast<std::size_t>(tiles * 16 * kp + 64));
    const std::uintptr_t offset = (64 - reinterpret_cast<std::uintptr_t>(amx_act.data()) % 64) % 64;
    std::uint8_t* dst = amx_act.data() + offset;  // 64-byte aligned: a 1 KB tile is 16 cache lines
    p.act = dst;
    act_sums.resize(static_cast<std::size_t>(m));
    const std::int64_t prep_threads = std::min(threads, tiles);
    std::uint32_t* sums = act_sums.data();  // (by pointer: the workers' act_sums are their own)
    parallel_for(static_cast<int>(prep_threads), [&](int t) {
      ternary_prepare_amx(x, m, k, is_signed, dst, sums, tiles * t / prep_threads,
                          tiles * (t + 1) / prep_threads);
    });
    w_corr.resize(static_cast<std::size_t>(w.rows));
    for (std::int64_t n = 0; n < w.rows; ++n)
      w_corr[n] = is_signed ? 0u : 0u - 128u * static_cast<std::uint32_t>(w.row_sums[n]);
    p.act_sums = act_sums.data();
    p.w_corr = w_corr.data();
  } else if (chosen != TernaryIsa::kPortable) {
    // The AVX2 and VNNI kernels read u = x (+ 128 in signed mode) in whole 256-byte blocks: a copy padded
    // with zeros to kp (O(m k), against the product's O(m n k)), and each row's sum of u.
    p.act_stride = kp + 64;
    // 64-byte aligned rows (kp + 64 is a multiple of 64): no 32-byte load of a row straddles two
    // cache lines (on Zen 3 such split loads cost twice; half of them were split from the
    // vector's 16-byte aligned storage).
    if (act.size() < static_cast<std::size_t>(m * p.act_stride + 64))
      act.resize(static_cast<std::size_t>(m * p.act_stride + 64));
    std::uint8_t* act_base =
        act.data() + (64 - reinterpret_cast<std::uintptr_t>(act.data()) % 64) % 64;
    act_sums.resize(static_cast<std::size_t>(m));
    const std::uint8_t flip = is_signed ? 0x80 : 0x00;  // s8 x + 128 as u8 is x XOR 0x80
    for (std::int64_t r = 0; r < m; ++r) {
      const std::uint8_t* src = x + r * k;
      std::uint8_t* dst = act_base + r * p.act_stride;
      std::uint32_t sum = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        dst[t] = static_cast<std::uint8_t>(src[t] ^ flip);
        sum += dst[t];
      }
      std::memset(dst + k, 0, static_cast<std::size_t>(p.act_stride - k));  // padding: code 0
      act_sums[r] = sum;
    }
    w_corr.resize(static_cast<std::size_t>(w.rows));
    for (std::int64_t n = 0; n < w.rows; ++n)
      w_corr[n] = is_signed ? 128u * static_cast<std::uint32_t>(w.row_sums[n]) : 0u;
    p.act = act_base;
    p.act_sums = act_sums.data();
    p.w_corr = w_corr.data();
  }

  // Split the weight rows when every thread gets whole register tiles of them (each thread then
  // streams only its share of the weights: what bounds batch 1); otherwise the activation rows.
  const bool split_n = w.rows >= threads * kRowGrain;
  if (!split_n) threads = std::min(threads, m);
  if (threads <= 1) {
    rect(p, 0, m, 0, w.rows);
    return;
  }
  std::vector<std::int64_t> bounds(static_cast<std::size_t>(threads + 1));
  for (std::int64_t t = 0; t <= threads; ++t) {
    if (split_n) {
      const std::int64_t tiles = (w.rows + kRowGrain - 1) / kRowGrain;
      bounds[t] = std::min(w.rows, tiles * t / threads * kRowGrain);
    } else {
      bounds[t] = m * t / threads;
    }
  }
  bounds[threads] = split_n ? w.rows : m;
  parallel_for(static_cast<int>(threads), [&](int t) {
    const std::int64_t lo = bounds[t], hi = bounds[t + 1];
    if (lo >= hi) return;
    if (split_n)
      rect(p, 0, m, lo, hi);
    else
      rect(p, lo, hi, 0, w.rows);
  });
}

}  // namespace bayesq
