// nanobind bindings: the only file that knows about Python. Arrays are declared noconvert so a
// wrong dtype or a strided view is refused instead of silently copied; the Python wrappers in
// bayesq/kernels.py validate first and raise ValueError with the reason.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include <cmath>

#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>

#include <optional>
#include <stdexcept>
#include <string>

#include "bayesq_common.h"
#include "multi_spike_kl.h"
#include "normal_rng.h"

namespace nb = nanobind;

using FloatIn = nb::ndarray<const float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;
using FloatOut = nb::ndarray<float, nb::ndim<1>, nb::c_contig, nb::device::cpu>;

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
      [](FloatIn mean, FloatIn var, FloatOut out, std::uint64_t seed, float floor,
         std::optional<std::string> isa) {
        if (var.shape(0) != mean.shape(0) || out.shape(0) != mean.shape(0))
          throw std::invalid_argument("lrt_sample: mean, var and out differ in length");
        nb::gil_scoped_release release;
        bayesq::lrt_sample(mean.data(), var.data(), out.data(), mean.shape(0), seed, floor,
                           isa ? isa->c_str() : nullptr);
      },
      nb::arg("mean").noconvert(), nb::arg("var").noconvert(), nb::arg("out").noconvert(),
      nb::arg("seed"), nb::arg("floor"), nb::arg("isa") = nb::none());

  m.def(
      "lrt_sample_backward",
      [](FloatIn grad_out, FloatIn var, FloatOut grad_var, std::uint64_t seed, float floor,
         std::optional<std::string> isa) {
        if (var.shape(0) != grad_out.shape(0) || grad_var.shape(0) != grad_out.shape(0))
          throw std::invalid_argument("lrt_sample_backward: arrays differ in length");
        nb::gil_scoped_release release;
        bayesq::lrt_sample_backward(grad_out.data(), var.data(), grad_var.data(),
                                    grad_out.shape(0), seed, floor, isa ? isa->c_str() : nullptr);
      },
      nb::arg("grad_out").noconvert(), nb::arg("var").noconvert(),
      nb::arg("grad_var").noconvert(), nb::arg("seed"), nb::arg("floor"),
      nb::arg("isa") = nb::none());
}
