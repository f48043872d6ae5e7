// A stand-alone test driver for the C++ kernels, built with AddressSanitizer and
// UndefinedBehaviorSanitizer (`make sanitize`, part of `make test`). It runs every kernel on
// random cases on every ISA path this CPU has, compares each result with an obvious reference
// written here, and checks that bad layouts throw std::invalid_argument. A sanitizer report, a
// mismatch or an unexpected exception ends the process with a non-zero status.
//
//   bayesq_test_driver [cases per check, default 300] [seed, default 1]
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "bitserial/bitpack.h"
#include "bitserial/bitserial_gemm.h"
#include "bitserial/bitserial_linear.h"
#include "common/bayesq_common.h"
#include "common/thread_pool.h"
#include "lowbit/sparse_ternary.h"
#include "lowbit/ternary_gemm.h"
#include "runner/direct_gemm.h"
#include "runner/net_plan.h"
#include "vnq/multi_spike_kl.h"
#include "vnq/normal_rng.h"

namespace {

using bayesq::CodeMode;

int g_failures = 0;

void expect(bool ok, const std::string& what) {
  if (!ok) {
    ++g_failures;
    if (g_failures <= 20) std::fprintf(stderr, "FAIL: %s\n", what.c_str());
  }
}

std::vector<std::string> isas() {
  std::vector<std::string> out;
  for (const char* name : {"portable", "avx2", "avx512"}) {
    try {
      bayesq::resolve_bitserial_isa(name);
      out.emplace_back(name);
    } catch (const std::invalid_argument&) {
    }
  }
  return out;
}

// A packed matrix that owns its buffers, sized exactly as bitpack.h requires (no slack, so
// that AddressSanitizer sees any read past the padding rows).
struct Packed {
  std::vector<std::int8_t> codes;  // rows x k, the code values
  std::vector<std::int64_t> offsets, sums;
  std::vector<bayesq::word_t> planes;
  std::int64_t rows = 0, k = 0;
  CodeMode mode = CodeMode::kSigned;

  bayesq::BitPlanesView view() const;
};

bayesq::BitPlanesView make_view(const std::vector<bayesq::word_t>& planes,
                                const std::vector<std::int64_t>& offsets,
                                const std::vector<std::int64_t>& sums, std::int64_t rows,
                                std::int64_t k, CodeMode mode) {
  bayesq::BitPlanesView v;
  v.planes = planes.data();
  v.plane_offsets = offsets.data();
  v.row_sums = sums.data();
  v.rows = rows;
  v.k = k;
  v.words = bayesq::words_per_plane(k);
  v.mode = mode;
  return v;
}

bayesq::BitPlanesView Packed::view() const { return make_view(planes, offsets, sums, rows, k, mode); }

int code_of(std::mt19937_64& rng, int bits, CodeMode mode) {
  if (bits == 0) return 0;
  if (mode == CodeMode::kPlusMinusOne) return (rng() & 1) ? 1 : -1;
  if (mode == CodeMode::kUnsigned) return static_cast<int>(rng() % (1u << bits));
  return static_cast<int>(rng() % (1u << bits)) - (1 << (bits - 1));
}

Packed random_packed(std::mt19937_64& rng, std::int64_t rows, std::int64_t k, CodeMode mode,
                     const std::vector<int>& bits, const std::string& isa) {
  Packed p;
  p.rows = rows;
  p.k = k;
  p.mode = mode;
  p.offsets.assign(static_cast<std::size_t>(rows + 1), 0);
  for (std::int64_t r = 0; r < rows; ++r) p.offsets[r + 1] = p.offsets[r] + bits[r];
  p.codes.resize(static_cast<std::size_t>(rows * k));
  for (std::int64_t r = 0; r < rows; ++r)
    for (std::int64_t t = 0; t < k; ++t)
      p.codes[r * k + t] = static_cast<std::int8_t>(code_of(rng, bits[r], mode));
  p.planes.resize(static_cast<std::size_t>((p.offsets[rows] + bayesq::kPlaneRowPad) *
                                           bayesq::words_per_plane(k)));
  p.sums.resize(static_cast<std::size_t>(rows));
  const std::int64_t bad = bayesq::pack_bit_planes(
      reinterpret_cast<const std::uint8_t*>(p.codes.data()), p.offsets.data(), rows, k, mode,
      p.planes.data(), p.sums.data(), isa.c_str());
  expect(bad == 0, "pack_bit_planes rejected codes in range");
  return p;
}

std::int64_t pick(std::mt19937_64& rng, std::initializer_list<std::int64_t> values) {
  return *(values.begin() + rng() % values.size());
}

void check_gemm(std::mt19937_64& rng, const std::string& isa) {
  const std::int64_t n = pick(rng, {1, 2, 3, 5, 17, 40});
  const std::int64_t m = pick(rng, {1, 2, 7, 33, 70, 300});
  const std::int64_t k = pick(rng, {1, 63, 64, 65, 127, 511, 512, 513, 1000, 2100});
  const int a_choice = static_cast<int>(rng() % 3);
  const CodeMode a_mode = static_cast<CodeMode>(a_choice);
  const int a_bits = a_mode == CodeMode::kPlusMinusOne ? 1 : 1 + static_cast<int>(rng() % 8);
  const CodeMode w_mode = static_cast<CodeMode>(rng() % 3);
  std::vector<int> w_bits(static_cast<std::size_t>(m));
  for (auto& b : w_bits)
    b = w_mode == CodeMode::kPlusMinusOne ? static_cast<int>(rng() % 2) : static_cast<int>(rng() % 9);
  const Packed a = random_packed(rng, n, k, a_mode, std::vector<int>(n, a_bits), isa);
  const Packed w = random_packed(rng, m, k, w_mode, w_bits, isa);

  // unpack round trip
  std::vector<std::uint8_t> back(static_cast<std::size_t>(m * k));
  bayesq::unpack_bit_planes(w.view(), back.data());
  bool same = true;
  for (std::int64_t i = 0; i < m * k; ++i) {
    const int code = w_mode == CodeMode::kUnsigned ? static_cast<int>(back[i])
                                                   : static_cast<int>(static_cast<std::int8_t>(back[i]));
    const int want = w_mode == CodeMode::kUnsigned ? static_cast<int>(static_cast<std::uint8_t>(w.codes[i]))
                                                   : static_cast<int>(w.codes[i]);
    same &= code == want;
  }
  expect(same, "unpack(pack(codes)) == codes on " + isa);

  std::vector<std::int32_t> out(static_cast<std::size_t>(n * m));
  bayesq::GemmOutput o;
  o.out_int = out.data();
  const int threads = 1 + static_cast<int>(rng() % 3);
  bayesq::bitserial_gemm(a.view(), w.view(), o, isa.c_str(), threads);
  std::vector<float> row_scale(static_cast<std::size_t>(m)), act_scale(static_cast<std::size_t>(n)),
      bias(static_cast<std::size_t>(m));
  std::uniform_real_distribution<float> u(0.01f, 2.0f);
  for (auto& v : row_scale) v = u(rng);
  for (auto& v : act_scale) v = u(rng);
  for (auto& v : bias) v = u(rng) - 1.0f;
  std::vector<float> out_f(static_cast<std::size_t>(n * m));
  bayesq::GemmOutput of;
  of.out = out_f.data();
  of.row_scale = row_scale.data();
  of.act_scale = act_scale.data();
  of.bias = bias.data();
  bayesq::bitserial_gemm(a.view(), w.view(), of, isa.c_str(), threads);

  bool exact = true, scaled = true;
  for (std::int64_t i = 0; i < n; ++i) {
    for (std::int64_t j = 0; j < m; ++j) {
      std::int64_t dot = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        const auto value = [](const Packed& p, std::int64_t idx) {
          return p.mode == CodeMode::kUnsigned
                     ? static_cast<std::int64_t>(static_cast<std::uint8_t>(p.codes[idx]))
                     : static_cast<std::int64_t>(p.codes[idx]);
        };
        dot += value(a, i * k + t) * value(w, j * k + t);
      }
      exact &= out[i * m + j] == dot;
      const float want = static_cast<float>(dot) * row_scale[j] * act_scale[i] + bias[j];
      scaled &= out_f[i * m + j] == want;
    }
  }
  expect(exact, "bitserial_gemm int32 == reference dot products on " + isa + " n=" +
                    std::to_string(n) + " m=" + std::to_string(m) + " k=" + std::to_string(k));
  expect(scaled, "bitserial_gemm float output == float(dot) * scales + bias on " + isa);
}

float reference_quantize(float x, float scale, int bits, CodeMode mode) {
  if (mode == CodeMode::kPlusMinusOne) return x >= 0.0f ? 1.0f : -1.0f;
  const float lo = mode == CodeMode::kUnsigned ? 0.0f : -static_cast<float>(1 << (bits - 1));
  const float hi = mode == CodeMode::kUnsigned ? static_cast<float>((1 << bits) - 1)
                                               : static_cast<float>((1 << (bits - 1)) - 1);
  return std::fmin(std::fmax(std::nearbyint(x / scale), lo), hi);
}

void check_quantize_and_linear(std::mt19937_64& rng, const std::string& isa) {
  const std::int64_t n = pick(rng, {1, 3, 64, 129});
  const std::int64_t k = pick(rng, {1, 50, 64, 100, 777});
  const std::int64_t m = pick(rng, {1, 9, 64});
  const CodeMode mode = static_cast<CodeMode>(rng() % 3);
  const int bits = mode == CodeMode::kPlusMinusOne ? 1 : 1 + static_cast<int>(rng() % 8);
  const float scale = 0.05f + static_cast<float>(rng() % 100) / 50.0f;
  std::normal_distribution<float> normal(0.0f, 20.0f * scale);
  std::vector<float> x(static_cast<std::size_t>(n * k));
  for (std::size_t i = 0; i < x.size(); ++i)  // half of them on rounding ties
    x[i] = (i % 2) ? normal(rng) : scale * 0.5f * static_cast<float>(static_cast<int>(rng() % 1200) - 600);
  std::vector<bayesq::word_t> planes(
      static_cast<std::size_t>((n * bits + bayesq::kPlaneRowPad) * bayesq::words_per_plane(k)));
  std::vector<std::int64_t> sums(static_cast<std::size_t>(n));
  const int threads = 1 + static_cast<int>(rng() % 2);
  const std::int64_t nonfinite = bayesq::quantize_pack_bit_planes(
      x.data(), &scale, 0, n, k, bits, mode, planes.data(), sums.data(), isa.c_str(), threads);
  expect(nonfinite == 0, "finite input reported as non-finite");
  std::vector<std::int64_t> offsets(static_cast<std::size_t>(n + 1));
  for (std::int64_t r = 0; r <= n; ++r) offsets[r] = r * bits;
  const bayesq::BitPlanesView v = make_view(planes, offsets, sums, n, k, mode);
  std::vector<std::uint8_t> codes(static_cast<std::size_t>(n * k));
  bayesq::unpack_bit_planes(v, codes.data());
  bool same = true;
  for (std::int64_t i = 0; i < n * k; ++i) {
    const float got = mode == CodeMode::kUnsigned ? static_cast<float>(codes[i])
                                                  : static_cast<float>(static_cast<std::int8_t>(codes[i]));
    same &= got == reference_quantize(x[i], scale, bits, mode);
  }
  expect(same, "quantize_pack_bit_planes == clamp(nearbyint(x / scale)) on " + isa);

  // The layer: quantize + GEMM against the reference quantizer and dot products.
  std::vector<int> w_bits(static_cast<std::size_t>(m));
  for (auto& b : w_bits) b = static_cast<int>(rng() % 4);
  const Packed w = random_packed(rng, m, k, CodeMode::kSigned, w_bits, isa);
  std::vector<float> row_scale(static_cast<std::size_t>(m), 0.5f), bias(static_cast<std::size_t>(m), 0.25f);
  bayesq::BitserialLinear layer(w.view(), static_cast<std::int64_t>(w.planes.size()),
                                row_scale.data(), bias.data(), bits, mode, scale);
  std::vector<float> y(static_cast<std::size_t>(n * m));
  layer.forward(x.data(), n, y.data(), isa.c_str(), threads);
  bool layer_ok = true;
  for (std::int64_t i = 0; i < n; ++i)
    for (std::int64_t j = 0; j < m; ++j) {
      std::int64_t dot = 0;
      for (std::int64_t t = 0; t < k; ++t)
        dot += static_cast<std::int64_t>(reference_quantize(x[i * k + t], scale, bits, mode)) *
               w.codes[j * k + t];
      layer_ok &= y[i * m + j] == static_cast<float>(dot) * 0.5f * scale + 0.25f;
    }
  expect(layer_ok, "BitserialLinear == reference on " + isa);

  x[x.size() / 2] = NAN;
  bool threw = false;
  try {
    layer.forward(x.data(), n, y.data(), isa.c_str(), threads);
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, "BitserialLinear rejects NaN input");
}

template <class F>
void expect_invalid(F f, const std::string& what) {
  bool threw = false;
  try {
    f();
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  expect(threw, what + " throws std::invalid_argument");
}

void check_bad_layouts(std::mt19937_64& rng) {
  const Packed w = random_packed(rng, 4, 100, CodeMode::kSigned, {2, 0, 8, 3}, "portable");
  bayesq::BitPlanesView v = w.view();
  const auto size = static_cast<std::int64_t>(w.planes.size());
  bayesq::check_layout(v, size, "ok");
  expect_invalid([&] { bayesq::check_layout(v, size - 1, "short"); }, "a planes buffer one word short");
  bayesq::BitPlanesView bad_words = v;
  bad_words.words = 1;
  expect_invalid([&] { bayesq::check_layout(bad_words, size, "words"); }, "wrong words per plane");
  std::vector<std::int64_t> offsets = w.offsets;
  offsets[2] = offsets[1] - 1;
  bayesq::BitPlanesView falling = v;
  falling.plane_offsets = offsets.data();
  expect_invalid([&] { bayesq::check_layout(falling, size, "falling"); }, "falling offsets");
  std::vector<std::int64_t> wide = {0, 9, 9, 9, 9};
  bayesq::BitPlanesView nine = v;
  nine.plane_offsets = wide.data();
  expect_invalid([&] { bayesq::check_layout(nine, size, "nine"); }, "a row of 9 planes");
  const Packed other = random_packed(rng, 2, 101, CodeMode::kUnsigned, {1, 1}, "portable");
  std::vector<std::int32_t> out(8);
  bayesq::GemmOutput o;
  o.out_int = out.data();
  expect_invalid([&] { bayesq::bitserial_gemm(other.view(), v, o); }, "a k mismatch");
  expect_invalid([&] { bayesq::bitserial_gemm(w.view(), v, o, "avx9"); }, "an unknown isa");
  std::vector<float> scale(4, 1.0f);
  expect_invalid(
      [&] { bayesq::BitserialLinear(v, size, scale.data(), nullptr, 9, CodeMode::kUnsigned, 1.0f); },
      "9 activation bits");
  expect_invalid(
      [&] { bayesq::BitserialLinear(v, size, scale.data(), nullptr, 4, CodeMode::kUnsigned, NAN); },
      "a NaN activation scale");
}

void check_vnq_kernels(std::mt19937_64& rng) {
  // The KL and noise kernels on odd lengths (vector tails) on every path: same results as the
  // portable one within float tolerance, nothing read or written out of bounds.
  const std::size_t n = 1 + rng() % 1000;
  std::vector<float> theta(n), log_sigma2(n), var(n), mean(n);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (std::size_t i = 0; i < n; ++i) {
    theta[i] = 0.3f * normal(rng);
    log_sigma2[i] = -6.0f + 3.0f * normal(rng);
    mean[i] = normal(rng);
    var[i] = std::exp(normal(rng));
  }
  std::vector<float> ref_kl;
  std::vector<float> ref_noise;
  for (const std::string& isa : isas()) {
    std::vector<float> kl(n), g_theta(n), g_ls(n), g_r(n), noise(n), sample(n), dsample_dvar(n);
    bayesq::MultiSpikeKLArgs args{theta.data(), log_sigma2.data(), n, 0.2f, 3,
                                  kl.data(), g_theta.data(), g_ls.data(), g_r.data()};
    expect(bayesq::multi_spike_kl(args, isa.c_str(), 2) == 0, "multi_spike_kl finite inputs");
    bayesq::normal_fill(noise.data(), n, 42, isa.c_str(), 2);
    expect(!bayesq::lrt_sample(mean.data(), var.data(), sample.data(), dsample_dvar.data(), n, 7,
                               1e-8f, isa.c_str()),
           "lrt_sample accepts positive variances on " + isa);
    std::vector<float> bad_var = var;
    bad_var[rng() % n] = -1e-3f;
    expect(bayesq::lrt_sample(mean.data(), bad_var.data(), sample.data(), dsample_dvar.data(), n,
                              7, 1e-8f, isa.c_str(), 2),
           "lrt_sample flags a negative variance on " + isa);
    std::vector<float> bad_mean = mean;
    bad_mean[rng() % n] = NAN;
    expect(bayesq::lrt_sample(bad_mean.data(), var.data(), sample.data(), dsample_dvar.data(), n,
                              7, 1e-8f, isa.c_str()),
           "lrt_sample flags a NaN mean on " + isa);
    if (ref_kl.empty()) {
      ref_kl = kl;
      ref_noise = noise;
      continue;
    }
    bool close = true;
    for (std::size_t i = 0; i < n; ++i) {
      close &= std::fabs(kl[i] - ref_kl[i]) <= 1e-3f * (1.0f + std::fabs(ref_kl[i]));
      close &= std::fabs(noise[i] - ref_noise[i]) <= 1e-3f * (1.0f + std::fabs(ref_noise[i]));
    }
    expect(close, "KL and noise on " + isa + " agree with the portable path");
  }
}

void check_thread_pool(std::mt19937_64& rng) {
  // More tasks than the pool's bound: every task runs exactly once, on a bounded pool.
  const int cap = bayesq::max_pool_threads();
  const int tasks = 2 + static_cast<int>(rng() % static_cast<std::uint64_t>(3 * cap));
  std::vector<std::atomic<int>> runs(static_cast<std::size_t>(tasks));
  bayesq::parallel_for(tasks, [&](int t) { runs[static_cast<std::size_t>(t)].fetch_add(1); });
  bool once = true;
  for (const auto& r : runs) once &= r.load() == 1;
  expect(once, "parallel_for runs each of " + std::to_string(tasks) + " tasks once");
  // The exception of the lowest failing task index comes back to the caller.
  const int first_bad = static_cast<int>(rng() % static_cast<std::uint64_t>(tasks));
  try {
    bayesq::parallel_for(tasks, [&](int t) {
      if (t >= first_bad) throw std::invalid_argument(std::to_string(t));
    });
    expect(false, "parallel_for rethrows a task's exception");
  } catch (const std::invalid_argument& e) {
    expect(std::string(e.what()) == std::to_string(first_bad),
           "parallel_for rethrows the lowest failing task's exception");
  }
}

// The obvious product the ternary kernels are checked against: x (m x k bytes, u8 or s8) times
// w^T (n x k int8 codes), int64 sums stored as int32.
std::vector<std::int32_t> int_product(const std::vector<std::uint8_t>& x,
                                      const std::vector<std::int8_t>& w, std::int64_t m,
                                      std::int64_t n, std::int64_t k, bool is_signed) {
  std::vector<std::int32_t> out(static_cast<std::size_t>(m * n));
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      std::int64_t acc = 0;
      for (std::int64_t t = 0; t < k; ++t) {
        const std::uint8_t b = x[i * k + t];
        const std::int64_t xv = is_signed ? static_cast<std::int8_t>(b) : b;
        acc += xv * w[j * k + t];
      }
      out[i * n + j] = static_cast<std::int32_t>(acc);
    }
  return out;
}

// The ternary x 8-bit GEMM (lowbit/ternary_gemm.h) on every path this CPU has, against an
// obvious int64 loop over the codes. Every buffer is sized exactly (x: m x k, the packed rows:
// kp / 4 bytes each), so AddressSanitizer sees any read past an end; K straddles the 64-byte
// vectors and the 256-weight blocks (4100: several K chunks of the AMX path), M and N the
// 16-row AMX tiles (M sometimes its large-batch scheme, N its 32-row pairs and sometimes 128-row
// panels), and the thread counts split both weight and activation rows. (ASan does not see inside AMX tile loads and stores; under ASan the AMX
// kernel reads the first and last byte of each tile row itself, ternary_gemm_amx.cpp.)
// The ternary paths this CPU runs, and nullptr: the per-batch choice of ternary_best_isa.
std::vector<const char*> ternary_paths() {
  std::vector<const char*> paths;
  for (const char* isa : {"portable", "avx2", "avxvnni", "avx512vnni", "avx512vnni_gfni", "amx"}) {
    try {
      bayesq::resolve_ternary_isa(isa);
      paths.push_back(isa);
    } catch (const std::invalid_argument&) {
    }
  }
  paths.push_back(nullptr);
  return paths;
}

void check_ternary(std::mt19937_64& rng) {
  static const std::int64_t kSizes[] = {1, 3, 63, 64, 65, 127, 128, 129, 255, 256, 257, 700, 4100};
  const std::int64_t k = kSizes[rng() % (sizeof(kSizes) / sizeof(kSizes[0]))];
  // (512 rows and more: the AMX path's large-batch scheme)
  const std::int64_t m = rng() % 16 == 0 ? 512 + static_cast<std::int64_t>(rng() % 100)
                                         : 1 + static_cast<std::int64_t>(rng() % 40);
  const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % (rng() % 8 == 0 ? 160 : 40));
  const bool is_signed = rng() % 2 == 0;
  const int threads = 1 + static_cast<int>(rng() % 4);
  const unsigned zero_percent = static_cast<unsigned>(rng() % 100);
  std::vector<std::int8_t> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) v = rng() % 100 < zero_percent ? 0 : (rng() % 2 ? 1 : -1);
  std::vector<std::uint8_t> x(static_cast<std::size_t>(m * k));
  for (auto& v : x) v = static_cast<std::uint8_t>(rng());
  std::vector<std::uint8_t> packed(static_cast<std::size_t>(bayesq::ternary_packed_bytes(n, k)));
  std::vector<std::int32_t> sums(static_cast<std::size_t>(n));
  bayesq::pack_ternary(w.data(), n, k, packed.data(), sums.data());
  bayesq::TernaryWeightsView view;
  view.rows = n;
  view.k = k;
  view.codes = packed.data();
  view.row_sums = sums.data();
  const std::vector<std::int32_t> expected = int_product(x, w, m, n, k, is_signed);
  static const std::vector<const char*> paths = ternary_paths();
  for (const char* isa : paths) {
    std::vector<std::int32_t> out(static_cast<std::size_t>(m * n));
    bayesq::ternary_gemm(x.data(), m, is_signed, view, out.data(), isa, threads);
    expect(out == expected, std::string("ternary_gemm ") + (isa ? isa : "(best)") +
                                " m=" + std::to_string(m) +
                                " k=" + std::to_string(k) + " n=" + std::to_string(n) +
                                (is_signed ? " signed" : " unsigned"));
  }
  std::vector<std::int8_t> bad(w);
  bad[bad.size() - 1] = 2;
  expect_invalid([&] { bayesq::pack_ternary(bad.data(), n, k, packed.data(), sums.data()); },
                 "a ternary code of 2");
  std::vector<std::int32_t> out(static_cast<std::size_t>(m * n));
  expect_invalid([&] { bayesq::ternary_gemm(x.data(), m, false, view, out.data(), "avx9"); },
                 "an unknown ternary isa");
}


// The direct GEMM (runner/direct_gemm.h), plain and with its fused 2 x 2 max pooling, on both
// paths against an obvious loop here (int64 products, the float32 scaling in the reference's
// order). x holds exactly m rows of the padded stride.
void check_direct(std::mt19937_64& rng) {
  const std::int64_t k = pick(rng, {1, 3, 4, 5, 25, 63, 64, 65, 500});
  const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 70);
  const bool pool = rng() % 2 == 0;
  const std::int64_t m = pool ? 4 * (1 + static_cast<std::int64_t>(rng() % 6))
                              : 1 + static_cast<std::int64_t>(rng() % 23);
  const bool is_signed = rng() % 2 == 0;
  const int threads = 1 + static_cast<int>(rng() % 4);
  const std::int64_t stride = bayesq::direct_padded_k(k);
  // weights of any width, or within the AVX2 path's exact range (ternary, |w| <= 64); bytes of
  // any value, or 4-bit codes (whose int16 sums the AVX2 path keeps for 1092 groups)
  const int weight_range = pick(rng, {256, 3, 129});
  const int act_max = is_signed ? 255 : pick(rng, {255, 15});
  std::vector<std::int8_t> w(static_cast<std::size_t>(n * k));
  for (auto& v : w)
    v = static_cast<std::int8_t>(rng() % 3 == 0 ? 0
                                 : static_cast<int>(rng() % weight_range) - weight_range / 2);
  std::vector<std::uint8_t> x(static_cast<std::size_t>(m * stride), 0);
  for (std::int64_t i = 0; i < m; ++i)
    for (std::int64_t t = 0; t < k; ++t)
      x[i * stride + t] = static_cast<std::uint8_t>(rng() % (act_max + 1));
  std::vector<float> scale(static_cast<std::size_t>(n)), bias(static_cast<std::size_t>(n));
  for (std::int64_t j = 0; j < n; ++j) {
    scale[j] = static_cast<float>(static_cast<int>(rng() % 200) - 50) / 97.0f;
    bias[j] = static_cast<float>(static_cast<int>(rng() % 200) - 100) / 7.0f;
  }
  const float act_scale = 0.03125f * static_cast<float>(1 + rng() % 9);
  const bayesq::DirectWeights packed = bayesq::pack_direct(w.data(), n, k);
  const std::int64_t out_rows = pool ? m / 4 : m;
  std::vector<float> expected(static_cast<std::size_t>(out_rows * n));
  for (std::int64_t i = 0; i < out_rows; ++i)
    for (std::int64_t j = 0; j < n; ++j) {
      float best = 0.0f;
      for (std::int64_t q = 0; q < (pool ? 4 : 1); ++q) {
        const std::int64_t row = pool ? 4 * i + q : i;
        std::int64_t acc = 0;
        for (std::int64_t t = 0; t < k; ++t) {
          const std::uint8_t b = x[row * stride + t];
          acc += (is_signed ? static_cast<std::int8_t>(b) : b) * std::int64_t{w[j * k + t]};
        }
        float v = static_cast<float>(acc) * scale[j];
        v = v * act_scale;
        v = v + bias[j];
        best = q == 0 || v > best ? v : best;
      }
      expected[i * n + j] = best;
    }
  bayesq::DirectEpilogue e;
  e.row_scale = scale.data();
  e.bias = bias.data();
  e.act_scale = act_scale;
  using bayesq::DirectPath;
  for (const DirectPath path :
       {DirectPath::kPortable, DirectPath::kAvx2, DirectPath::kVnni, DirectPath::kAmx}) {
    if (path == DirectPath::kAvx2 && !bayesq::direct_avx2_available()) continue;
    if (path == DirectPath::kVnni && !bayesq::direct_gemm_available()) continue;
    if (path == DirectPath::kAmx && !bayesq::direct_amx_available()) continue;
    std::vector<float> out(static_cast<std::size_t>(out_rows * n));
    if (path == DirectPath::kAvx2 && bayesq::direct_avx2_steps(act_max, packed.max_abs) < 1) {
      expect_invalid([&] { bayesq::direct_gemm(x.data(), m, stride, is_signed, packed, e,
                                               out.data(), path, threads, pool, act_max); },
                     "an AVX2 direct GEMM whose int16 sums could saturate");
      continue;
    }
    bayesq::direct_gemm(x.data(), m, stride, is_signed, packed, e, out.data(), path, threads,
                        pool, act_max);
    const char* name = path == DirectPath::kPortable ? "portable"
                       : path == DirectPath::kAvx2   ? "avx2"
                       : path == DirectPath::kVnni   ? "avx512vnni"
                                                     : "amx";
    expect(out == expected, std::string("direct_gemm ") + name +
                                " m=" + std::to_string(m) + " k=" + std::to_string(k) +
                                " n=" + std::to_string(n) + (pool ? " pooled" : ""));
  }
  std::vector<float> out(static_cast<std::size_t>(out_rows * n));
  expect_invalid([&] { bayesq::direct_gemm(x.data(), m, stride - 4, is_signed, packed, e,
                                           out.data(), DirectPath::kPortable, 1); },
                 "a direct x_stride below the padded k");
}

// A whole small net through NetPlan (runner/net_plan.h): a ternary convolution with padding and
// stride, a 2 x 2 max pooling (fused on the direct engine), a flatten and a linear layer, on
// every engine; every engine's logits must agree (they are each exact), and bad shapes throw.
void check_net_plan(std::mt19937_64& rng) {
  const int c = 1 + static_cast<int>(rng() % 3), h = 4 + static_cast<int>(rng() % 6);
  const int oc = 1 + static_cast<int>(rng() % 20), out = 1 + static_cast<int>(rng() % 12);
  const std::int64_t kc = c * 9;
  const int ho = (h + 2 - 3) / 1 + 1, hp = ho / 2;
  const std::int64_t kl = std::int64_t{oc} * hp * hp;
  std::vector<int> conv_bits(static_cast<std::size_t>(oc), 2), fc_bits(static_cast<std::size_t>(out), 2);
  Packed conv = random_packed(rng, oc, kc, CodeMode::kSigned, conv_bits, "portable");
  Packed fc = random_packed(rng, out, kl, CodeMode::kSigned, fc_bits, "portable");
  for (Packed* p : {&conv, &fc}) {  // 2-bit codes span -2..1: make them ternary, pack again
    for (auto& v : p->codes) v = v < -1 ? -1 : v;
    expect(bayesq::pack_bit_planes(reinterpret_cast<const std::uint8_t*>(p->codes.data()),
                                   p->offsets.data(), p->rows, p->k, CodeMode::kSigned,
                                   p->planes.data(), p->sums.data(), "portable") == 0,
           "pack_bit_planes of ternary codes");
  }
  std::vector<std::uint8_t> tern_conv(static_cast<std::size_t>(bayesq::ternary_packed_bytes(oc, kc)));
  std::vector<std::uint8_t> tern_fc(static_cast<std::size_t>(bayesq::ternary_packed_bytes(out, kl)));
  std::vector<std::int32_t> sums_conv(static_cast<std::size_t>(oc)), sums_fc(static_cast<std::size_t>(out));
  bayesq::pack_ternary(conv.codes.data(), oc, kc, tern_conv.data(), sums_conv.data());
  bayesq::pack_ternary(fc.codes.data(), out, kl, tern_fc.data(), sums_fc.data());
  std::vector<float> scale(64, 0.25f), bias(64, 0.5f);
  bayesq::NetPlan plan;
  const auto layer = [&](const Packed& p, const std::vector<std::uint8_t>& tern,
                         const std::vector<std::int32_t>& sums, bool is_conv) {
    bayesq::PlanLayer l;
    l.planes = p.view();
    l.planes_size = static_cast<std::int64_t>(p.planes.size());
    l.ternary.rows = p.rows;
    l.ternary.k = p.k;
    l.ternary.codes = tern.data();
    l.ternary.row_sums = sums.data();
    l.ternary_by_default = true;
    l.codes = p.codes.data();
    l.row_scale = scale.data();
    l.bias = bias.data();
    l.act_bits = 4;
    l.act_mode = CodeMode::kUnsigned;
    l.act_scale = 0.125f;
    l.in_features = p.k;
    if (is_conv) l.in_channels = c, l.kh = 3, l.kw = 3, l.ph = 1, l.pw = 1;
    plan.add_layer(l);
  };
  layer(conv, tern_conv, sums_conv, true);
  plan.add_glue(bayesq::PlanStep::kMaxPool, 2);
  plan.add_glue(bayesq::PlanStep::kFlatten, 1);
  layer(fc, tern_fc, sums_fc, false);
  const std::int64_t batch = 1 + static_cast<std::int64_t>(rng() % 40);
  std::vector<float> x(static_cast<std::size_t>(batch * c * h * h));
  for (auto& v : x) v = static_cast<float>(static_cast<int>(rng() % 64) - 16) / 8.0f;
  const std::vector<std::int64_t> shape = {c, h, h};
  std::vector<float> first;
  for (const bayesq::PlanEngine engine :
       {bayesq::PlanEngine::kBitserial, bayesq::PlanEngine::kAuto, bayesq::PlanEngine::kTernary,
        bayesq::PlanEngine::kDirect, bayesq::PlanEngine::kSparse}) {
    const bool portable = engine == bayesq::PlanEngine::kDirect &&
                          !bayesq::direct_gemm_available() && !bayesq::direct_avx2_available();
    if (engine == bayesq::PlanEngine::kTernary &&
        bayesq::resolve_ternary_isa(nullptr) == bayesq::TernaryIsa::kPortable)
      continue;  // its portable path is a slow reference, checked on its own above
    std::vector<float> y(static_cast<std::size_t>(batch * out));
    plan.run(x.data(), batch, shape, y.data(), engine, portable ? "portable" : nullptr,
             1 + static_cast<int>(rng() % 3));
    if (first.empty()) first = y;
    expect(y == first, "NetPlan engine " + std::to_string(static_cast<int>(engine)) +
                           " differs from the bit-serial one");
  }
  std::vector<float> y(static_cast<std::size_t>(batch * out));
  expect_invalid([&] { plan.run(x.data(), batch, {c + 1, h, h}, y.data(),
                                bayesq::PlanEngine::kAuto, nullptr, 1); },
                 "a NetPlan input of the wrong channels");
}
// The sparse ternary x 8-bit GEMM (lowbit/sparse_ternary.h) on every path this CPU has, against
// an obvious int64 loop over the codes. Every buffer is sized exactly (x: m x k; the stream:
// its bytes and the 64-byte pad the layout promises), so AddressSanitizer sees any read past an
// end; K straddles the vectors and the 255-position blocks, m both the gather form (< 4) and
// panel tiles, the weights run from none kept (and empty rows) to all kept (255 pairs per
// (row, block), flushed in runs of 128), and the thread counts split both groups and rows.
void check_sparse_ternary(std::mt19937_64& rng) {
  static const std::int64_t kSizes[] = {1, 3, 63, 64, 65, 127, 128, 254, 255, 256, 257, 511, 700};
  const std::int64_t k = kSizes[rng() % (sizeof(kSizes) / sizeof(kSizes[0]))];
  const std::int64_t m = 1 + static_cast<std::int64_t>(rng() % 70);
  const std::int64_t n = 1 + static_cast<std::int64_t>(rng() % 140);
  const bool is_signed = rng() % 2 == 0;
  const int threads = 1 + static_cast<int>(rng() % 4);
  const unsigned zero_percent = static_cast<unsigned>(rng() % 101);
  const int one_sign = static_cast<int>(rng() % 4);  // 1 or 2: every kept weight +1 or -1
  std::vector<std::int8_t> w(static_cast<std::size_t>(n * k));
  for (auto& v : w) {
    v = rng() % 100 < zero_percent ? 0 : (rng() % 2 ? 1 : -1);
    if (v != 0 && one_sign == 1) v = 1;
    if (v != 0 && one_sign == 2) v = -1;
  }
  for (std::int64_t r = 0; r < n; ++r)  // some empty rows
    if (rng() % 8 == 0) std::fill(w.begin() + r * k, w.begin() + (r + 1) * k, std::int8_t(0));
  std::vector<std::uint8_t> x(static_cast<std::size_t>(m * k));
  for (auto& v : x) v = static_cast<std::uint8_t>(rng());
  const std::int64_t bytes = bayesq::sparse_ternary_stream_bytes(w.data(), n, k);
  std::vector<std::uint8_t> offsets(static_cast<std::size_t>(bytes + bayesq::kSparsePad));
  std::vector<std::uint8_t> counts(static_cast<std::size_t>(bayesq::sparse_counts_size(n, k)));
  std::vector<std::int64_t> starts(static_cast<std::size_t>(bayesq::sparse_groups(n) + 1));
  std::vector<std::int32_t> sums(static_cast<std::size_t>(n));
  bayesq::pack_sparse_ternary(w.data(), n, k, offsets.data(), counts.data(), starts.data(),
                              sums.data());
  bayesq::SparseTernaryView view;
  view.rows = n;
  view.k = k;
  view.offsets = offsets.data();
  view.counts = counts.data();
  view.starts = starts.data();
  view.row_sums = sums.data();
  const std::vector<std::int32_t> expected = int_product(x, w, m, n, k, is_signed);
  for (const char* isa : {"portable", "avx2", "avx512"}) {
    try {
      bayesq::resolve_sparse_isa(isa);
    } catch (const std::invalid_argument&) {
      continue;
    }
    std::vector<std::int32_t> out(static_cast<std::size_t>(m * n));
    bayesq::sparse_ternary_gemm(x.data(), m, is_signed, view, out.data(), isa, threads);
    expect(out == expected, std::string("sparse_ternary_gemm ") + isa + " m=" +
                                std::to_string(m) + " k=" + std::to_string(k) + " n=" +
                                std::to_string(n) + (is_signed ? " signed" : " unsigned"));
  }
  std::vector<std::int8_t> bad(w);
  bad[bad.size() - 1] = 2;
  expect_invalid([&] { bayesq::sparse_ternary_stream_bytes(bad.data(), n, k); },
                 "a sparse ternary code of 2");
  std::vector<std::int32_t> out(static_cast<std::size_t>(m * n));
  expect_invalid([&] { bayesq::sparse_ternary_gemm(x.data(), m, false, view, out.data(), "avx9"); },
                 "an unknown sparse ternary isa");
  // counts that claim more pairs than the stream holds: refused before any read past it (the
  // last (row, block) is read last, so the stream has exactly its 2 L bytes left there)
  if (counts.back() == 255) return;
  std::vector<std::uint8_t> greedy(counts);
  greedy.back() = 255;
  bayesq::SparseTernaryView corrupt = view;
  corrupt.counts = greedy.data();
  for (const char* isa : {"portable", "avx2", "avx512"}) {
    try {
      bayesq::resolve_sparse_isa(isa);
    } catch (const std::invalid_argument&) {
      continue;
    }
    expect_invalid(
        [&] { bayesq::sparse_ternary_gemm(x.data(), m, is_signed, corrupt, out.data(), isa, threads); },
        std::string("corrupt sparse counts on ") + isa);
  }
}

}  // namespace

int main(int argc, char** argv) {
  const int cases = argc > 1 ? std::atoi(argv[1]) : 300;
  const std::uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
  std::mt19937_64 rng(seed);
  const std::vector<std::string> paths = isas();
  try {
    for (int c = 0; c < cases; ++c) {
      for (const std::string& isa : paths) {
        check_gemm(rng, isa);
        check_quantize_and_linear(rng, isa);
      }
      check_ternary(rng);
      check_direct(rng);
      check_sparse_ternary(rng);
      if (c % 10 == 0) {
        check_net_plan(rng);
        check_bad_layouts(rng);
        check_vnq_kernels(rng);
        check_thread_pool(rng);
      }
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "unexpected exception: %s\n", e.what());
    return 2;
  }
  std::string ternary;
  for (const char* isa : ternary_paths()) ternary += std::string(" ") + (isa ? isa : "(best)");
  std::printf("%d cases x %zu ISA paths (ternary:%s), %d failures\n", cases, paths.size(),
              ternary.c_str(), g_failures);
  return g_failures == 0 ? 0 : 1;
}
