// nanobind bindings: the only file that knows about Python. Arrays are declared noconvert so a
// wrong dtype or a strided view is refused instead of silently copied; the Python wrappers in
// bayesq/kernels.py validate first and raise ValueError with the reason.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cmath>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <nanobind/stl/vector.h>

#include <memory>
#include <optional>
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
#include "runner/net_plan.h"
#include "vnq/multi_spike_kl.h"
#include "vnq/normal_rng.h"

namespace nb = nanobind;

using FloatIn = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using FloatOut = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

// Bit planes: the arrays of a packed matrix (see csrc/bitserial/bitpack.h for the layout).
using PlanesIn = nb::ndarray<const std::uint64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using PlanesOut = nb::ndarray<std::uint64_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using Int64In = nb::ndarray<const std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using Int64Out = nb::ndarray<std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using AnyMatrix = nb::ndarray<nb::ndim<2>, nb::c_contig, nb::device::cpu>;
// Codes that are only read: read-only arrays (np.frombuffer, a frozen BitPlanes) are accepted.
using AnyMatrixIn = nb::ndarray<nb::ro, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using FloatVecIn = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

namespace {

bayesq::CodeMode code_mode(int mode) {
  if (mode < 0 || mode > 2) throw std::invalid_argument("mode must be 0 (unsigned), 1 (signed) or 2 (+-1)");
  return static_cast<bayesq::CodeMode>(mode);
}

bool is_byte_dtype(const nb::dlpack::dtype& d) {
  return d == nb::dtype<std::int8_t>() || d == nb::dtype<std::uint8_t>();
}

// A checked view of a packed matrix: every size the kernels rely on is verified here, so that a
// hand-made or mismatched set of arrays raises ValueError instead of reading out of bounds.
bayesq::BitPlanesView planes_view(const PlanesIn& planes, const Int64In& offsets,
                                  const Int64In& sums, std::int64_t k, int mode, const char* what) {
  bayesq::BitPlanesView v;
  if (offsets.shape(0) < 1)
    throw std::invalid_argument(std::string(what) + ": plane_offsets must have rows + 1 entries");
  v.rows = static_cast<std::int64_t>(offsets.shape(0)) - 1;
  v.k = k;
  v.words = static_cast<std::int64_t>(planes.shape(1));
  v.mode = code_mode(mode);
  v.planes = planes.data();
  v.plane_offsets = offsets.data();
  v.row_sums = sums.data();
  if (static_cast<std::int64_t>(sums.shape(0)) != v.rows)
    throw std::invalid_argument(std::string(what) + ": row_sums must have one entry per row");
  bayesq::check_layout(v, static_cast<std::int64_t>(planes.shape(0) * planes.shape(1)), what);
  return v;
}

const char* isa_name(const std::optional<std::string>& isa) { return isa ? isa->c_str() : nullptr; }

using U8VecIn = nb::ndarray<nb::ro, std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using I32VecIn = nb::ndarray<nb::ro, std::int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using FloatBatch = nb::ndarray<const float, nb::c_contig, nb::device::cpu>;
using I8MatrixIn = nb::ndarray<nb::ro, std::int8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using FloatBatchOut = nb::ndarray<float, nb::c_contig, nb::device::cpu>;

// The Python face of NetPlan: holds every array the plan borrows for the plan's life.
struct PlanHandle {
  bayesq::NetPlan plan;
  std::vector<PlanesIn> planes;
  std::vector<Int64In> int64s;
  std::vector<FloatVecIn> floats;
  std::vector<U8VecIn> bytes;
  std::vector<I32VecIn> int32s;
  std::vector<I8MatrixIn> codes;
};

std::vector<std::int64_t> sample_shape(const FloatBatch& x) {
  if (x.ndim() < 2 || x.shape(0) < 1)
    throw std::invalid_argument("NetPlan: x must be a batch (N, ...) with N >= 1");
  std::vector<std::int64_t> s;
  for (std::size_t d = 1; d < x.ndim(); ++d) s.push_back(static_cast<std::int64_t>(x.shape(d)));
  return s;
}

using FloatMatrixIn = nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;
using FloatMatrixOut = nb::ndarray<float, nb::ndim<2>, nb::c_contig, nb::device::cpu>;

// The Python face of BitserialLinear: holds the weight arrays (so the borrowed pointers stay
// valid for the object's life) next to the layer itself.
struct LinearHandle {
  PlanesIn planes;
  Int64In offsets, sums;
  FloatVecIn row_scale;
  std::optional<FloatVecIn> bias;
  std::unique_ptr<bayesq::BitserialLinear> layer;
};

}  // namespace

NB_MODULE(_kernels, m) {
  m.doc() = "bayesq bit-serial kernels (C++17, runtime ISA dispatch)";

  m.def("cpu_features", [] {
    const auto& f = bayesq::cpu_features();
    nb::dict d;
    d["avx2"] = f.avx2;
    d["avx512f"] = f.avx512f;
    d["avx512vpopcntdq"] = f.avx512vpopcntdq;
    return d;
  });

  // The pool's bound (thread_pool.h): no job runs on more threads, whatever num_threads says.
  m.def("max_threads", [] { return bayesq::max_pool_threads(); });

  m.def(
      "popcount_words",
      [](nb::ndarray<const std::uint64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> words) {
        return bayesq::popcount_words(words.data(), words.shape(0));
      },
      nb::arg("words").noconvert());

  m.def(
      "multi_spike_kl",
      [](FloatIn theta, FloatIn log_sigma2, float codebook_scale, int num_levels, FloatOut kl,
         FloatOut grad_theta, FloatOut grad_log_sigma2, FloatOut grad_scale,
         std::optional<std::string> isa, int num_threads) {
        const std::size_t n = theta.shape(0);
        for (std::size_t size : {log_sigma2.shape(0), kl.shape(0), grad_theta.shape(0),
                                 grad_log_sigma2.shape(0), grad_scale.shape(0)}) {
          if (size != n) throw std::invalid_argument("multi_spike_kl: arrays differ in length");
        }
        if (!(codebook_scale > 0.0f) || !std::isfinite(codebook_scale))
          throw std::invalid_argument("multi_spike_kl: codebook_scale must be finite and > 0");
        if (num_levels < 1 || num_levels > 15 || num_levels % 2 == 0)
          throw std::invalid_argument("multi_spike_kl: num_levels must be odd, 1 to 15");
        bayesq::MultiSpikeKLArgs args{theta.data(), log_sigma2.data(), n, codebook_scale,
                                      num_levels, kl.data(), grad_theta.data(),
                                      grad_log_sigma2.data(), grad_scale.data()};
        std::size_t non_finite;
        {
          nb::gil_scoped_release release;
          non_finite = bayesq::multi_spike_kl(args, isa ? isa->c_str() : nullptr, num_threads);
        }
        return non_finite;
      },
      nb::arg("theta").noconvert(), nb::arg("log_sigma2").noconvert(), nb::arg("codebook_scale"),
      nb::arg("num_levels"), nb::arg("kl").noconvert(), nb::arg("grad_theta").noconvert(),
      nb::arg("grad_log_sigma2").noconvert(), nb::arg("grad_scale").noconvert(),
      nb::arg("isa") = nb::none(), nb::arg("num_threads") = 1);

  m.def(
      "normal_fill",
      [](FloatOut out, std::uint64_t seed, std::optional<std::string> isa, int num_threads) {
        nb::gil_scoped_release release;
        bayesq::normal_fill(out.data(), out.shape(0), seed, isa ? isa->c_str() : nullptr,
                            num_threads);
      },
      nb::arg("out").noconvert(), nb::arg("seed"), nb::arg("isa") = nb::none(),
      nb::arg("num_threads") = 1);

  m.def(
      "lrt_sample",
      [](FloatIn mean, FloatIn var, FloatOut out, FloatOut dout_dvar, std::uint64_t seed,
         float floor, std::optional<std::string> isa, int num_threads) {
        const std::size_t n = mean.shape(0);
        if (var.shape(0) != n || out.shape(0) != n || dout_dvar.shape(0) != n)
          throw std::invalid_argument("lrt_sample: mean, var, out and dout_dvar differ in length");
        if (num_threads < 1) throw std::invalid_argument("lrt_sample: num_threads must be >= 1");
        if (!(floor >= 0.0f && std::isfinite(floor)))
          throw std::invalid_argument("lrt_sample: floor must be finite and >= 0");
        nb::gil_scoped_release release;
        // true: a negative variance or a NaN / infinite sample; the caller must not use out
        return bayesq::lrt_sample(mean.data(), var.data(), out.data(), dout_dvar.data(), n, seed,
                                  floor, isa ? isa->c_str() : nullptr, num_threads);
      },
      nb::arg("mean").noconvert(), nb::arg("var").noconvert(), nb::arg("out").noconvert(),
      nb::arg("dout_dvar").noconvert(), nb::arg("seed"), nb::arg("floor"),
      nb::arg("isa") = nb::none(), nb::arg("num_threads") = 1);

  m.def("bitserial_isas", [] {
    std::vector<std::string> names;
    for (const char* name : {"portable", "avx2", "avx512"}) {
      try {
        bayesq::resolve_bitserial_isa(name);
        names.emplace_back(name);
      } catch (const std::invalid_argument&) {
      }
    }
    return names;
  });

  m.def("bitserial_default_isa", [] {
    switch (bayesq::resolve_bitserial_isa(nullptr)) {
      case bayesq::Isa::kAvx512: return std::string("avx512");
      case bayesq::Isa::kAvx2: return std::string("avx2");
      default: return std::string("portable");
    }
  });

  m.def(
      "pack_bit_planes",
      [](AnyMatrixIn codes, Int64In offsets, int mode, PlanesOut planes, Int64Out row_sums,
         std::optional<std::string> isa) {
        if (!is_byte_dtype(codes.dtype()))
          throw std::invalid_argument("pack_bit_planes: codes must be int8 or uint8");
        const std::int64_t rows = static_cast<std::int64_t>(codes.shape(0));
        const std::int64_t k = static_cast<std::int64_t>(codes.shape(1));
        if (static_cast<std::int64_t>(offsets.shape(0)) != rows + 1)
          throw std::invalid_argument("pack_bit_planes: plane_offsets must have rows + 1 entries");
        bayesq::BitPlanesView v;
        v.rows = rows;
        v.k = k;
        v.words = static_cast<std::int64_t>(planes.shape(1));
        v.mode = code_mode(mode);
        v.plane_offsets = offsets.data();
        bayesq::check_layout(v, static_cast<std::int64_t>(planes.shape(0) * planes.shape(1)),
                             "pack_bit_planes");
        if (static_cast<std::int64_t>(row_sums.shape(0)) != rows)
          throw std::invalid_argument("pack_bit_planes: row_sums must have one entry per row");
        const auto* bytes = static_cast<const std::uint8_t*>(codes.data());
        nb::gil_scoped_release release;
        return bayesq::pack_bit_planes(bytes, offsets.data(), rows, k, v.mode, planes.data(),
                                       row_sums.data(), isa_name(isa));
      },
      nb::arg("codes").noconvert(), nb::arg("plane_offsets").noconvert(), nb::arg("mode"),
      nb::arg("planes").noconvert(), nb::arg("row_sums").noconvert(),
      nb::arg("isa") = nb::none());

  m.def(
      "quantize_pack_bit_planes",
      [](nb::ndarray<const float, nb::ndim<2>, nb::c_contig, nb::device::cpu> x, FloatVecIn scale,
         int bits, int mode, PlanesOut planes, Int64Out row_sums, std::optional<std::string> isa,
         int num_threads) {
        const std::int64_t rows = static_cast<std::int64_t>(x.shape(0));
        const std::int64_t k = static_cast<std::int64_t>(x.shape(1));
        const bayesq::CodeMode m = code_mode(mode);
        const int top = m == bayesq::CodeMode::kPlusMinusOne ? 1 : bayesq::kMaxPlanes;
        if (bits < 1 || bits > top)
          throw std::invalid_argument("quantize_pack_bit_planes: bits must lie in 1.." +
                                      std::to_string(top));
        if (rows < 1 || k < 1) throw std::invalid_argument("quantize_pack_bit_planes: empty x");
        const std::int64_t scales = static_cast<std::int64_t>(scale.shape(0));
        if (scales != 1 && scales != rows)
          throw std::invalid_argument("quantize_pack_bit_planes: scale must have 1 or rows entries");
        for (std::int64_t i = 0; i < scales; ++i)
          if (!(scale.data()[i] > 0.0f && scale.data()[i] <= 3.4e38f))
            throw std::invalid_argument("quantize_pack_bit_planes: scales must be finite and > 0");
        const std::int64_t words = bayesq::words_per_plane(k);
        if (static_cast<std::int64_t>(planes.shape(1)) != words ||
            static_cast<std::int64_t>(planes.shape(0)) != rows * bits + bayesq::kPlaneRowPad)
          throw std::invalid_argument("quantize_pack_bit_planes: planes must be (rows * bits + " +
                                      std::to_string(bayesq::kPlaneRowPad) + ", " +
                                      std::to_string(words) + ")");
        if (static_cast<std::int64_t>(row_sums.shape(0)) != rows)
          throw std::invalid_argument("quantize_pack_bit_planes: row_sums must have rows entries");
        if (num_threads < 1)
          throw std::invalid_argument("quantize_pack_bit_planes: num_threads must be >= 1");
        nb::gil_scoped_release release;
        return bayesq::quantize_pack_bit_planes(x.data(), scale.data(), scales == 1 ? 0 : 1, rows,
                                                k, bits, m, planes.data(), row_sums.data(),
                                                isa_name(isa), num_threads);
      },
      nb::arg("x").noconvert(), nb::arg("scale").noconvert(), nb::arg("bits"), nb::arg("mode"),
      nb::arg("planes").noconvert(), nb::arg("row_sums").noconvert(),
      nb::arg("isa") = nb::none(), nb::arg("num_threads") = 1);

  m.def(
      "unpack_bit_planes",
      [](PlanesIn planes, Int64In offsets, Int64In sums, std::int64_t k, int mode, AnyMatrix codes) {
        const bayesq::BitPlanesView v = planes_view(planes, offsets, sums, k, mode, "unpack_bit_planes");
        if (!is_byte_dtype(codes.dtype()) ||
            static_cast<std::int64_t>(codes.shape(0)) != v.rows ||
            static_cast<std::int64_t>(codes.shape(1)) != k)
          throw std::invalid_argument("unpack_bit_planes: codes must be a writable (rows, k) int8/uint8 array");
        nb::gil_scoped_release release;
        bayesq::unpack_bit_planes(v, static_cast<std::uint8_t*>(codes.data()));
      },
      nb::arg("planes").noconvert(), nb::arg("plane_offsets").noconvert(),
      nb::arg("row_sums").noconvert(), nb::arg("k"), nb::arg("mode"),
      nb::arg("codes").noconvert());

  m.def(
      "bitserial_gemm",
      [](PlanesIn a_planes, Int64In a_offsets, Int64In a_sums, int a_mode, PlanesIn w_planes,
         Int64In w_offsets, Int64In w_sums, int w_mode, std::int64_t k, AnyMatrix out,
         std::optional<FloatVecIn> row_scale, std::optional<FloatVecIn> act_scale,
         std::optional<FloatVecIn> bias, std::optional<std::string> isa, int num_threads) {
        const bayesq::BitPlanesView a = planes_view(a_planes, a_offsets, a_sums, k, a_mode, "activations");
        const bayesq::BitPlanesView w = planes_view(w_planes, w_offsets, w_sums, k, w_mode, "weights");
        // The int32 accumulators are exact only while k |a| |w| fits; bounded from the offsets
        // themselves, so no caller-side field (BitPlanes.max_bits) has to be trusted. k <= 2^31
        // after check_layout's words check, |codes| <= 255: the product fits in int64.
        const std::int64_t bound = k * bayesq::max_abs_code(a) * bayesq::max_abs_code(w);
        if (bound > INT32_MAX)
          throw std::invalid_argument("bitserial_gemm: k = " + std::to_string(k) +
                                      " with these widths could exceed int32 (" +
                                      std::to_string(bound) + " > 2^31 - 1)");
        if (static_cast<std::int64_t>(out.shape(0)) != a.rows ||
            static_cast<std::int64_t>(out.shape(1)) != w.rows)
          throw std::invalid_argument("bitserial_gemm: out must be a writable (n, m) array");
        bayesq::GemmOutput o;
        if (out.dtype() == nb::dtype<std::int32_t>()) {
          if (row_scale || act_scale || bias)
            throw std::invalid_argument("bitserial_gemm: an int32 output takes no scales or bias");
          o.out_int = static_cast<std::int32_t*>(out.data());
        } else if (out.dtype() == nb::dtype<float>()) {
          if (!row_scale || !act_scale)
            throw std::invalid_argument("bitserial_gemm: a float32 output needs row_scale and act_scale");
          if (static_cast<std::int64_t>(row_scale->shape(0)) != w.rows ||
              static_cast<std::int64_t>(act_scale->shape(0)) != a.rows ||
              (bias && static_cast<std::int64_t>(bias->shape(0)) != w.rows))
            throw std::invalid_argument("bitserial_gemm: row_scale and bias need m entries, act_scale n");
          o.out = static_cast<float*>(out.data());
          o.row_scale = row_scale->data();
          o.act_scale = act_scale->data();
          o.bias = bias ? bias->data() : nullptr;
        } else {
          throw std::invalid_argument("bitserial_gemm: out must be int32 or float32");
        }
        if (num_threads < 1) throw std::invalid_argument("bitserial_gemm: num_threads must be >= 1");
        nb::gil_scoped_release release;
        bayesq::bitserial_gemm(a, w, o, isa_name(isa), num_threads);
      },
      nb::arg("a_planes").noconvert(), nb::arg("a_offsets").noconvert(),
      nb::arg("a_sums").noconvert(), nb::arg("a_mode"), nb::arg("w_planes").noconvert(),
      nb::arg("w_offsets").noconvert(), nb::arg("w_sums").noconvert(), nb::arg("w_mode"),
      nb::arg("k"), nb::arg("out").noconvert(), nb::arg("row_scale").noconvert() = nb::none(),
      nb::arg("act_scale").noconvert() = nb::none(), nb::arg("bias").noconvert() = nb::none(),
      nb::arg("isa") = nb::none(), nb::arg("num_threads") = 1);

  nb::class_<LinearHandle>(m, "BitserialLinear")
      .def(
          "__init__",
          [](LinearHandle* self, PlanesIn planes, Int64In offsets, Int64In sums, int w_mode,
             std::int64_t k, FloatVecIn row_scale, std::optional<FloatVecIn> bias, int act_bits,
             int act_mode, float act_scale) {
            const bayesq::BitPlanesView w = planes_view(planes, offsets, sums, k, w_mode, "weights");
            if (static_cast<std::int64_t>(row_scale.shape(0)) != w.rows ||
                (bias && static_cast<std::int64_t>(bias->shape(0)) != w.rows))
              throw std::invalid_argument("BitserialLinear: row_scale and bias need one entry per weight row");
            new (self) LinearHandle{planes, offsets, sums, row_scale, bias, nullptr};
            self->layer = std::make_unique<bayesq::BitserialLinear>(
                w, static_cast<std::int64_t>(planes.shape(0) * planes.shape(1)), row_scale.data(),
                bias ? bias->data() : nullptr, act_bits, code_mode(act_mode), act_scale);
          },
          nb::arg("planes").noconvert(), nb::arg("plane_offsets").noconvert(),
          nb::arg("row_sums").noconvert(), nb::arg("weight_mode"), nb::arg("k"),
          nb::arg("row_scale").noconvert(), nb::arg("bias").noconvert() = nb::none(),
          nb::arg("act_bits"), nb::arg("act_mode"), nb::arg("act_scale"))
      .def(
          "forward",
          [](LinearHandle& self, FloatMatrixIn x, FloatMatrixOut out,
             std::optional<std::string> isa, int num_threads) {
            const std::int64_t n = static_cast<std::int64_t>(x.shape(0));
            if (static_cast<std::int64_t>(x.shape(1)) != self.layer->in_features())
              throw std::invalid_argument("BitserialLinear.forward: x must have " +
                                          std::to_string(self.layer->in_features()) + " columns");
            if (static_cast<std::int64_t>(out.shape(0)) != n ||
                static_cast<std::int64_t>(out.shape(1)) != self.layer->out_features())
              throw std::invalid_argument("BitserialLinear.forward: out must be (batch, " +
                                          std::to_string(self.layer->out_features()) + ")");
            if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1");
            nb::gil_scoped_release release;
            self.layer->forward(x.data(), n, out.data(), isa_name(isa), num_threads);
          },
          nb::arg("x").noconvert(), nb::arg("out").noconvert(), nb::arg("isa") = nb::none(),
          nb::arg("num_threads") = 1);

  // The ternary x 8-bit GEMM (csrc/lowbit/ternary_gemm.h). bayesq/lowbit_gemm.py checks every
  // argument first; the sizes are checked again here so that hand-made arrays cannot make the
  // kernels read or write out of bounds.
  m.def("ternary_isas", [] {
    std::vector<std::string> names;
    for (const char* name : {"portable", "avx2", "avxvnni", "avx512vnni", "avx512vnni_gfni", "amx"}) {
      try {
        bayesq::resolve_ternary_isa(name);
        names.emplace_back(name);
      } catch (const std::invalid_argument&) {
      }
    }
    return names;
  });

  m.def("ternary_packed_bytes", [](std::int64_t rows, std::int64_t k) {
    if (rows < 0 || k < 1 || k > bayesq::kTernaryMaxK)
      throw std::invalid_argument("ternary_packed_bytes: rows >= 0 and 1 <= k <= 2^23");
    return bayesq::ternary_packed_bytes(rows, k);
  });

  m.def("ternary_default_isa",
        [] { return std::string(bayesq::ternary_isa_name(bayesq::resolve_ternary_isa(nullptr))); });

  m.def("ternary_isa_for", [](std::int64_t m) {
    if (m < 1) throw std::invalid_argument("ternary_isa_for: m must be >= 1");
    return std::string(bayesq::ternary_isa_name(bayesq::ternary_best_isa(m)));
  });

  m.def(
      "pack_ternary",
      [](nb::ndarray<const std::int8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> codes,
         nb::ndarray<std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> packed,
         nb::ndarray<std::int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> row_sums) {
        const std::int64_t rows = static_cast<std::int64_t>(codes.shape(0));
        const std::int64_t k = static_cast<std::int64_t>(codes.shape(1));
        if (k < 1 || k > bayesq::kTernaryMaxK)
          throw std::invalid_argument("pack_ternary: k out of range");
        if (static_cast<std::int64_t>(packed.shape(0)) != bayesq::ternary_packed_bytes(rows, k) ||
            static_cast<std::int64_t>(row_sums.shape(0)) != rows)
          throw std::invalid_argument(
              "pack_ternary: packed must have ternary_packed_bytes(rows, k), row_sums rows entries");
        nb::gil_scoped_release release;
        bayesq::pack_ternary(codes.data(), rows, k, packed.data(), row_sums.data());
      },
      nb::arg("codes").noconvert(), nb::arg("packed").noconvert(), nb::arg("row_sums").noconvert());

  m.def(
      "ternary_gemm",
      [](AnyMatrixIn x, bool is_signed,
         nb::ndarray<nb::ro, std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> packed,
         nb::ndarray<nb::ro, std::int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> row_sums,
         std::int64_t k, nb::ndarray<std::int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> out,
         std::optional<std::string> isa, int num_threads) {
        const nb::dlpack::dtype want =
            is_signed ? nb::dtype<std::int8_t>() : nb::dtype<std::uint8_t>();
        if (x.dtype() != want)
          throw std::invalid_argument("ternary_gemm: x must be int8 (signed) or uint8 (unsigned)");
        const std::int64_t m = static_cast<std::int64_t>(x.shape(0));
        const std::int64_t rows = static_cast<std::int64_t>(row_sums.shape(0));
        if (k < 1 || k > bayesq::kTernaryMaxK || static_cast<std::int64_t>(x.shape(1)) != k)
          throw std::invalid_argument("ternary_gemm: x must have k columns, 1 <= k <= 2^23");
        if (static_cast<std::int64_t>(packed.shape(0)) != bayesq::ternary_packed_bytes(rows, k))
          throw std::invalid_argument("ternary_gemm: packed weights do not match k and the rows");
        if (static_cast<std::int64_t>(out.shape(0)) != m ||
            static_cast<std::int64_t>(out.shape(1)) != rows)
          throw std::invalid_argument("ternary_gemm: out must be (m, rows)");
        if (num_threads < 1) throw std::invalid_argument("ternary_gemm: num_threads must be >= 1");
        bayesq::TernaryWeightsView w;
        w.rows = rows;
        w.k = k;
        w.codes = packed.data();
        w.row_sums = row_sums.data();
        const auto* bytes = static_cast<const std::uint8_t*>(x.data());
        nb::gil_scoped_release release;
        bayesq::ternary_gemm(bytes, m, is_signed, w, out.data(), isa_name(isa), num_threads);
      },
      nb::arg("x").noconvert(), nb::arg("is_signed"), nb::arg("packed").noconvert(),
      nb::arg("row_sums").noconvert(), nb::arg("k"), nb::arg("out").noconvert(),
      nb::arg("isa") = nb::none(), nb::arg("num_threads") = 1);

  // A whole discrete net in one call (csrc/runner/net_plan.h); bayesq/runtime.py builds it.
  m.def("direct_gemm_available", [] { return bayesq::direct_gemm_available(); });
  m.def("direct_avx2_available", [] { return bayesq::direct_avx2_available(); });
  m.def("direct_amx_available", [] { return bayesq::direct_amx_available(); });
  nb::class_<PlanHandle>(m, "NetPlan")
      .def(nb::init<>())
      .def(
          "add_layer",
          [](PlanHandle& self, PlanesIn planes, Int64In offsets, Int64In sums, int w_mode,
             std::int64_t k, std::optional<U8VecIn> ternary, std::optional<I32VecIn> ternary_sums,
             bool ternary_by_default, FloatVecIn row_scale, FloatVecIn bias, int act_bits,
             int act_mode, float act_scale, std::optional<Int64In> input_index,
             std::int64_t in_features, std::vector<int> conv, std::optional<I8MatrixIn> codes) {
            bayesq::PlanLayer l;
            l.planes = planes_view(planes, offsets, sums, k, w_mode, "NetPlan weights");
            l.planes_size = static_cast<std::int64_t>(planes.shape(0) * planes.shape(1));
            const std::int64_t rows = l.planes.rows;
            if (static_cast<std::int64_t>(row_scale.shape(0)) != rows ||
                static_cast<std::int64_t>(bias.shape(0)) != rows)
              throw std::invalid_argument("NetPlan: row_scale and bias need one entry per row");
            if (ternary.has_value() != ternary_sums.has_value())
              throw std::invalid_argument("NetPlan: ternary weights need their row sums");
            if (ternary) {
              if (k > bayesq::kTernaryMaxK ||
                  static_cast<std::int64_t>(ternary->shape(0)) !=
                      bayesq::ternary_packed_bytes(rows, k) ||
                  static_cast<std::int64_t>(ternary_sums->shape(0)) != rows)
                throw std::invalid_argument("NetPlan: ternary weights do not match the planes");
              l.ternary.rows = rows;
              l.ternary.k = k;
              l.ternary.codes = ternary->data();
              l.ternary.row_sums = ternary_sums->data();
            }
            l.ternary_by_default = ternary_by_default;
            l.row_scale = row_scale.data();
            l.bias = bias.data();
            l.act_bits = act_bits;
            l.act_mode = code_mode(act_mode);
            l.act_scale = act_scale;
            if (input_index) {
              if (static_cast<std::int64_t>(input_index->shape(0)) != k)
                throw std::invalid_argument("NetPlan: input_index needs one entry per column");
              l.input_index = input_index->data();
            }
            l.in_features = in_features;
            if (codes) {
              if (static_cast<std::int64_t>(codes->shape(0)) != rows ||
                  static_cast<std::int64_t>(codes->shape(1)) != k)
                throw std::invalid_argument("NetPlan: codes must be (rows, k) int8");
              l.codes = codes->data();
            }
            if (!conv.empty()) {
              if (conv.size() != 7)
                throw std::invalid_argument("NetPlan: conv is (in_channels, kh, kw, sh, sw, ph, pw)");
              if (conv[0] < 1) throw std::invalid_argument("NetPlan: in_channels must be >= 1");
              l.in_channels = conv[0], l.kh = conv[1], l.kw = conv[2], l.sh = conv[3];
              l.sw = conv[4], l.ph = conv[5], l.pw = conv[6];
            }
            self.plan.add_layer(l);
            self.planes.push_back(planes);
            self.int64s.push_back(offsets);
            self.int64s.push_back(sums);
            if (ternary) self.bytes.push_back(*ternary), self.int32s.push_back(*ternary_sums);
            self.floats.push_back(row_scale);
            self.floats.push_back(bias);
            if (input_index) self.int64s.push_back(*input_index);
            if (codes) self.codes.push_back(*codes);
          },
          nb::arg("planes").noconvert(), nb::arg("plane_offsets").noconvert(),
          nb::arg("row_sums").noconvert(), nb::arg("weight_mode"), nb::arg("k"),
          nb::arg("ternary").noconvert().none(), nb::arg("ternary_sums").noconvert().none(),
          nb::arg("ternary_by_default"), nb::arg("row_scale").noconvert(),
          nb::arg("bias").noconvert(), nb::arg("act_bits"), nb::arg("act_mode"),
          nb::arg("act_scale"), nb::arg("input_index").noconvert().none(),
          nb::arg("in_features"), nb::arg("conv"), nb::arg("codes").noconvert().none())
      .def(
          "add_glue",
          [](PlanHandle& self, int kind, int pool) {
            if (kind < 1 || kind > 5) throw std::invalid_argument("NetPlan: unknown glue kind");
            self.plan.add_glue(static_cast<bayesq::PlanStep>(kind), pool);
          },
          nb::arg("kind"), nb::arg("pool") = 1)
      .def("output_shape", [](PlanHandle& self, std::vector<std::int64_t> shape) {
        return self.plan.output_shape(shape);
      })
      .def(
          "engine_of",
          [](PlanHandle& self, int layer, std::int64_t rows) {
            return static_cast<int>(self.plan.engine_of(layer, rows));
          },
          nb::arg("layer"), nb::arg("rows"))
      .def(
          "run",
          [](PlanHandle& self, FloatBatch x, FloatBatchOut out, int engine,
             std::optional<std::string> isa, int num_threads) {
            const std::vector<std::int64_t> shape = sample_shape(x);
            const std::vector<std::int64_t> want = self.plan.output_shape(shape);
            std::int64_t size = 1;
            for (const std::int64_t d : want) size *= d;
            std::int64_t have = 1;
            for (std::size_t d = 1; d < out.ndim(); ++d)
              have *= static_cast<std::int64_t>(out.shape(d));
            if (out.ndim() < 2 || out.shape(0) != x.shape(0) || have != size)
              throw std::invalid_argument("NetPlan.run: out must hold (N, *output_shape)");
            if (engine < -1 || engine > 3) throw std::invalid_argument("NetPlan.run: bad engine");
            if (num_threads < 1) throw std::invalid_argument("num_threads must be >= 1");
            nb::gil_scoped_release release;
            self.plan.run(x.data(), static_cast<std::int64_t>(x.shape(0)), shape, out.data(),
                          static_cast<bayesq::PlanEngine>(engine), isa_name(isa), num_threads);
          },
          nb::arg("x").noconvert(), nb::arg("out").noconvert(), nb::arg("engine"),
          nb::arg("isa") = nb::none(), nb::arg("num_threads") = 1);
  // The sparse ternary x 8-bit GEMM (csrc/lowbit/sparse_ternary.h). bayesq/sparse_ternary_gemm.py
  // checks every argument first; the sizes are checked again here, and the kernels check each
  // (row, block)'s counts against its group's stream, so that hand-made arrays cannot make them
  // read or write out of bounds.
  m.def("sparse_ternary_isas", [] {
    std::vector<std::string> names;
    for (const char* name : {"portable", "avx2", "avx512"}) {
      try {
        bayesq::resolve_sparse_isa(name);
        names.emplace_back(name);
      } catch (const std::invalid_argument&) {
      }
    }
    return names;
  });

  m.def("sparse_ternary_default_isa",
        [] { return std::string(bayesq::sparse_isa_name(bayesq::resolve_sparse_isa(nullptr))); });

  m.def("sparse_ternary_sizes", [](std::int64_t rows, std::int64_t k) {
    if (rows < 0 || k < 1 || k > bayesq::kSparseMaxK)
      throw std::invalid_argument("sparse_ternary_sizes: rows >= 0 and 1 <= k <= 2^23");
    // (entries of counts, entries of starts, bytes of pad after the stream)
    return std::vector<std::int64_t>{bayesq::sparse_counts_size(rows, k),
                                     bayesq::sparse_groups(rows) + 1, bayesq::kSparsePad};
  });

  m.def(
      "sparse_ternary_stream_bytes",
      [](nb::ndarray<const std::int8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> codes) {
        const std::int64_t rows = static_cast<std::int64_t>(codes.shape(0));
        const std::int64_t k = static_cast<std::int64_t>(codes.shape(1));
        nb::gil_scoped_release release;
        return bayesq::sparse_ternary_stream_bytes(codes.data(), rows, k);
      },
      nb::arg("codes").noconvert());

  m.def(
      "pack_sparse_ternary",
      [](nb::ndarray<const std::int8_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> codes,
         nb::ndarray<std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> offsets,
         nb::ndarray<std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> counts,
         nb::ndarray<std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> starts,
         nb::ndarray<std::int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> row_sums) {
        const std::int64_t rows = static_cast<std::int64_t>(codes.shape(0));
        const std::int64_t k = static_cast<std::int64_t>(codes.shape(1));
        nb::gil_scoped_release release;
        const std::int64_t bytes = bayesq::sparse_ternary_stream_bytes(codes.data(), rows, k);
        if (static_cast<std::int64_t>(offsets.shape(0)) != bytes + bayesq::kSparsePad ||
            static_cast<std::int64_t>(counts.shape(0)) != bayesq::sparse_counts_size(rows, k) ||
            static_cast<std::int64_t>(starts.shape(0)) != bayesq::sparse_groups(rows) + 1 ||
            static_cast<std::int64_t>(row_sums.shape(0)) != rows)
          throw std::invalid_argument(
              "pack_sparse_ternary: offsets must have stream + pad bytes, counts and starts the "
              "sizes of sparse_ternary_sizes(rows, k), row_sums rows entries");
        bayesq::pack_sparse_ternary(codes.data(), rows, k, offsets.data(), counts.data(),
                                    starts.data(), row_sums.data());
      },
      nb::arg("codes").noconvert(), nb::arg("offsets").noconvert(), nb::arg("counts").noconvert(),
      nb::arg("starts").noconvert(), nb::arg("row_sums").noconvert());

  m.def(
      "sparse_ternary_gemm",
      [](AnyMatrixIn x, bool is_signed,
         nb::ndarray<nb::ro, std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> offsets,
         nb::ndarray<nb::ro, std::uint8_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> counts,
         nb::ndarray<nb::ro, std::int64_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> starts,
         nb::ndarray<nb::ro, std::int32_t, nb::ndim<1>, nb::c_contig, nb::device::cpu> row_sums,
         std::int64_t k, nb::ndarray<std::int32_t, nb::ndim<2>, nb::c_contig, nb::device::cpu> out,
         std::optional<std::string> isa, int num_threads) {
        const nb::dlpack::dtype want =
            is_signed ? nb::dtype<std::int8_t>() : nb::dtype<std::uint8_t>();
        if (x.dtype() != want)
          throw std::invalid_argument(
              "sparse_ternary_gemm: x must be int8 (signed) or uint8 (unsigned)");
        const std::int64_t m = static_cast<std::int64_t>(x.shape(0));
        const std::int64_t rows = static_cast<std::int64_t>(row_sums.shape(0));
        if (k < 1 || k > bayesq::kSparseMaxK || static_cast<std::int64_t>(x.shape(1)) != k)
          throw std::invalid_argument("sparse_ternary_gemm: x must have k columns, 1 <= k <= 2^23");
        if (static_cast<std::int64_t>(counts.shape(0)) != bayesq::sparse_counts_size(rows, k))
          throw std::invalid_argument("sparse_ternary_gemm: counts do not match k and the rows");
        const std::int64_t groups = bayesq::sparse_groups(rows);
        if (static_cast<std::int64_t>(starts.shape(0)) != groups + 1)
          throw std::invalid_argument("sparse_ternary_gemm: starts must have groups + 1 entries");
        const std::int64_t* st = starts.data();
        bool ascending = st[0] == 0;
        for (std::int64_t g = 0; g < groups && ascending; ++g) ascending = st[g] <= st[g + 1];
        if (!ascending || static_cast<std::int64_t>(offsets.shape(0)) !=
                              st[groups] + bayesq::kSparsePad)
          throw std::invalid_argument(
              "sparse_ternary_gemm: starts must ascend from 0 to the stream's length, offsets "
              "hold the stream and its pad");
        if (static_cast<std::int64_t>(out.shape(0)) != m ||
            static_cast<std::int64_t>(out.shape(1)) != rows)
          throw std::invalid_argument("sparse_ternary_gemm: out must be (m, rows)");
        if (num_threads < 1)
          throw std::invalid_argument("sparse_ternary_gemm: num_threads must be >= 1");
        bayesq::SparseTernaryView w;
        w.rows = rows;
        w.k = k;
        w.offsets = offsets.data();
        w.counts = counts.data();
        w.starts = st;
        w.row_sums = row_sums.data();
        const auto* bytes = static_cast<const std::uint8_t*>(x.data());
        nb::gil_scoped_release release;
        bayesq::sparse_ternary_gemm(bytes, m, is_signed, w, out.data(), isa_name(isa),
                                    num_threads);
      },
      nb::arg("x").noconvert(), nb::arg("is_signed"), nb::arg("offsets").noconvert(),
      nb::arg("counts").noconvert(), nb::arg("starts").noconvert(),
      nb::arg("row_sums").noconvert(), nb::arg("k"), nb::arg("out").noconvert(),
      nb::arg("isa") = nb::none(), nb::arg("num_threads") = 1);
}
