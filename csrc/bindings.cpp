// nanobind bindings: the only file that knows about Python. Arrays are declared noconvert so a
// wrong dtype or a strided view is refused instead of silently copied; the Python wrappers in
// bayesq/kernels.py validate first and raise ValueError with the reason.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>

#include "bayesq_common.h"

namespace nb = nanobind;

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
}
