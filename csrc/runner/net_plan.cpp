// NetPlan: the compiled plan of a discrete net and its one-call forward (see net_plan.h).
//
// Layout inside the plan: images are kept channels-last, (H, W, C) per sample, because then a
// convolution's product rows come out of the GEMM as (sample, y, x) x channel, which is already
// the next image (no transposes), and an im2col row is kh runs of kw * C contiguous values. The
// columns of a convolution are therefore in (i, j, c) order; the Python side hands the plan its
// weights with the columns in that order (bayesq.runtime: exact, a dot product does not care).
// The net's input (N, C, H, W) is turned channels-last once, and a flatten turns the image back to
// torch's (C, H, W) order, which the next linear layer's columns expect.
#include "runner/net_plan.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "common/thread_pool.h"
#include "runner/plan_steps.h"

namespace bayesq {

using plan_steps::gather_columns;
using plan_steps::im2col_nhwc;
using plan_steps::pool_nhwc;
using plan_steps::split_rows;
using plan_steps::transpose_samples;

namespace {

using QuantizeRows = void (*)(const float*, const float*, std::int64_t, std::int64_t,
                              std::int64_t, std::int64_t, int, CodeMode, std::uint8_t*,
                              std::int64_t*, std::int64_t&);

QuantizeRows best_quantizer() {
  switch (resolve_bitserial_isa(nullptr)) {
    case Isa::kAvx512: return quantize_rows_avx512;
    case Isa::kAvx2: return quantize_rows_avx2;
    default: return quantize_rows_portable;
  }
}

std::int64_t product(const std::vector<std::int64_t>& shape) {
  std::int64_t p = 1;
  for (const std::int64_t d : shape) p *= d;
  return p;
}

std::string shape_text(const std::vector<std::int64_t>& shape) {
  std::string s = "(";
  for (std::size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + (shape.size() == 1 ? ",)" : ")");
}

}  // namespace

void NetPlan::add_layer(const PlanLayer& spec) {
  check_layout(spec.planes, spec.planes_size, "weights");
  if (spec.row_scale == nullptr || spec.bias == nullptr)
    throw std::invalid_argument("NetPlan: a layer needs row_scale and bias");
  if (spec.ternary.codes != nullptr &&
      (spec.ternary.rows != spec.planes.rows || spec.ternary.k != spec.planes.k))
    throw std::invalid_argument("NetPlan: the ternary weights' shape differs from the planes'");
  if (spec.ternary_by_default && spec.ternary.codes == nullptr)
    throw std::invalid_argument("NetPlan: ternary_by_default needs the ternary weights");
  if (spec.input_index == nullptr ? spec.in_features != spec.planes.k
                                  : spec.in_features < 1)
    throw std::invalid_argument("NetPlan: in_features must be the weights' columns, or the "
                                "width an input_index gathers from");
  if (spec.input_index != nullptr)
    for (std::int64_t t = 0; t < spec.planes.k; ++t)
      if (spec.input_index[t] < 0 || spec.input_index[t] >= spec.in_features)
        throw std::invalid_argument("NetPlan: an input_index entry is outside 0..in_features-1");
  if (spec.in_channels < 0 || spec.kh < 1 || spec.kw < 1 || spec.sh < 1 || spec.sw < 1 ||
      spec.ph < 0 || spec.pw < 0)
    throw std::invalid_argument("NetPlan: bad convolution geometry");
  if (spec.in_channels > 0 &&
      spec.in_features != std::int64_t{spec.in_channels} * spec.kh * spec.kw)
    throw std::invalid_argument("NetPlan: a convolution's in_features is in_channels * kh * kw");
  Layer layer;
  layer.spec = spec;
  // the bit-serial layer checks its settings here; each arena makes its own (bitserial_of)
  BitserialLinear(spec.planes, spec.planes_size, spec.row_scale, spec.bias, spec.act_bits,
                  spec.act_mode, spec.act_scale);
  if (spec.codes != nullptr) layer.direct = pack_direct(spec.codes, spec.planes.rows, spec.planes.k);
  if (spec.codes != nullptr && spec.ternary.codes != nullptr) {
    const std::int64_t rows = spec.planes.rows, k = spec.planes.k;
    SparseWeights& sw = layer.sparse;
    sw.offsets.assign(
        static_cast<std::size_t>(sparse_ternary_stream_bytes(spec.codes, rows, k) + kSparsePad), 0);
    sw.counts.assign(static_cast<std::size_t>(sparse_counts_size(rows, k)), 0);
    sw.starts.assign(static_cast<std::size_t>(sparse_groups(rows) + 1), 0);
    sw.row_sums.assign(static_cast<std::size_t>(rows), 0);
    pack_sparse_ternary(spec.codes, rows, k, sw.offsets.data(), sw.counts.data(),
                        sw.starts.data(), sw.row_sums.data());
    sw.view = SparseTernaryView{rows, k, sw.offsets.data(), sw.counts.data(), sw.starts.data(),
                                sw.row_sums.data()};
    std::int64_t kept = 0;
    for (std::int64_t t = 0; t < rows * k; ++t) kept += spec.codes[t] != 0;
    sw.kept = static_cast<double>(kept) / static_cast<double>(rows * k);
  }
  weight_bytes_ += spec.planes.rows * spec.planes.k;
  layers_.push_back(std::move(layer));
  steps_.push_back(Step{PlanStep::kLayer, static_cast<int>(layers_.size() - 1), 1});
}

void NetPlan::add_glue(PlanStep kind, int pool) {
  if (kind == PlanStep::kLayer) throw std::invalid_argument("NetPlan: add_glue takes a glue op");
  if ((kind == PlanStep::kMaxPool || kind == PlanStep::kAvgPool) && pool < 1)
    throw std::invalid_argument("NetPlan: a pooling window must be >= 1");
  steps_.push_back(Step{kind, -1, pool});
}

std::vector<std::int64_t> NetPlan::output_shape(const std::vector<std::int64_t>& shape) const {
  std::vector<std::int64_t> s = shape;
  if (s.empty() || s.size() > 3 || s.size() == 2)
    throw std::invalid_argument("NetPlan: a sample must be (F,) or (C, H, W), got " +
                                shape_text(shape));
  for (const std::int64_t d : s)
    if (d < 1) throw std::invalid_argument("NetPlan: empty sample shape " + shape_text(shape));
  for (std::size_t i = 0; i < steps_.size(); ++i) {
    const Step& st = steps_[i];
    const std::string where = "NetPlan step " + std::to_string(i) + ": ";
    switch (st.kind) {
      case PlanStep::kLayer: {
        const PlanLayer& l = layers_[static_cast<std::size_t>(st.layer)].spec;
        if (l.in_channels == 0) {
          if (s.size() != 1 || s[0] != l.in_features)
            throw std::invalid_argument(where + "a linear layer needs (" +
                                        std::to_string(l.in_features) + ",), gets " +
                                        shape_text(s));
          s = {l.planes.rows};
        } else {
          if (s.size() != 3 || s[0] != l.in_channels)
            throw std::invalid_argument(where + "a convolution needs (" +
                                        std::to_string(l.in_channels) + ", H, W), gets " +
                                        shape_text(s));
          const std::int64_t oh = (s[1] + 2 * l.ph - l.kh) / l.sh + 1;
          const std::int64_t ow = (s[2] + 2 * l.pw - l.kw) / l.sw + 1;
          if (s[1] + 2 * l.ph < l.kh || s[2] + 2 * l.pw < l.kw)
            throw std::invalid_argument(where + "the input is smaller than the kernel");
          s = {l.planes.rows, oh, ow};
        }
        break;
      }
      case PlanStep::kMaxPool:
      case PlanStep::kAvgPool:
        if (s.size() != 3 || s[1] < st.pool || s[2] < st.pool)
          throw std::invalid_argument(where + "pooling needs (C, H, W) of at least the window");
        s = {s[0], s[1] / st.pool, s[2] / st.pool};
        break;
      case PlanStep::kFlatten: s = {product(s)}; break;
      default: break;
    }
  }
  return s;
}

PlanEngine NetPlan::engine_of(int index, std::int64_t rows) const {
  if (index < 0 || index >= static_cast<int>(layers_.size()))
    throw std::invalid_argument("NetPlan: no layer " + std::to_string(index));
  const PlanLayer& l = layers_[static_cast<std::size_t>(index)].spec;
  if (l.act_mode == CodeMode::kPlusMinusOne || l.act_bits < 2) return PlanEngine::kBitserial;
  if (sparse_pays(index, rows)) return PlanEngine::kSparse;
  const bool amx = direct_amx_available() && rows >= kDirectAmxMinRows && l.planes.k >= kDirectAmxMinK;
  if (l.planes.k * l.planes.rows >= kTernaryWeights && !amx) {
    if (l.ternary_by_default) {
      // 2 bits a weight, AMX from 5 rows; without AMX the direct VNNI GEMM wins from
      // kDirectOverTernaryMinRows rows (net_plan.h)
      const bool vnni_only = direct_gemm_available() && !direct_amx_available();
      return vnni_only && rows >= kDirectOverTernaryMinRows ? PlanEngine::kDirect
                                                             : PlanEngine::kTernary;
    }
    // bit-serial work grows with the planes: it wins while reading the weights bounds the
    // product (few rows) or the planes are few (kBitserialMaxPlanePairs)
    int widest = 0;
    for (std::int64_t r = 0; r < l.planes.rows; ++r) widest = std::max(widest, l.planes.bits(r));
    if (rows < kBitserialMaxRows || widest * l.act_bits <= kBitserialMaxPlanePairs ||
        !direct_fast(index))
      return PlanEngine::kBitserial;
    return PlanEngine::kDirect;
  }
  if (direct_fast(index)) return PlanEngine::kDirect;
  return l.ternary_by_default ? PlanEngine::kTernary : PlanEngine::kBitserial;
}

bool NetPlan::sparse_pays(int index, std::int64_t rows) const {
  const Layer& layer = layers_[static_cast<std::size_t>(index)];
  if (layer.sparse.view.rows == 0 || !layer.spec.ternary_by_default) return false;
  // The crossovers against each dense engine: net_plan.h, beside the constants.
  const TernaryIsa dense = resolve_ternary_isa(nullptr);
  if (dense == TernaryIsa::kAmx || dense == TernaryIsa::kPortable ||
      resolve_sparse_isa(nullptr) == SparseIsa::kPortable)
    return false;
  const double kept = layer.sparse.kept;
  if (dense == TernaryIsa::kAvx2) return rows >= kSparseMinRows && kept <= kSparseMaxKept;
  const bool large = layer.spec.planes.k * layer.spec.planes.rows >= kTernaryWeights;
  return large && ((rows >= kSparseVnniMinRows && kept <= kSparseVnniMaxKept) ||
                   (rows >= kSparseMinRows && kept <= kSparseVnniSparseKept));
}

bool NetPlan::direct_fast(int index) const {
  const Layer& layer = layers_[static_cast<std::size_t>(index)];
  const PlanLayer& l = layer.spec;
  if (l.codes == nullptr) return false;
  if (direct_gemm_available()) return true;
  const int act_max = direct_act_max(l.act_bits, l.act_mode == CodeMode::kSigned);
  return direct_avx2_available() && direct_avx2_steps(act_max, layer.direct.max_abs) >= 1;
}

NetPlan::Arena& NetPlan::arena(int t) {
  while (static_cast<int>(arenas_.size()) <= t) arenas_.push_back(std::make_unique<Arena>());
  return *arenas_[static_cast<std::size_t>(t)];
}

BitserialLinear& NetPlan::bitserial_of(Arena& a, int index) {
  if (a.bitserial.size() < layers_.size()) a.bitserial.resize(layers_.size());
  std::unique_ptr<BitserialLinear>& slot = a.bitserial[static_cast<std::size_t>(index)];
  if (!slot) {
    const PlanLayer& l = layers_[static_cast<std::size_t>(index)].spec;
    slot = std::make_unique<BitserialLinear>(l.planes, l.planes_size, l.row_scale, l.bias,
                                             l.act_bits, l.act_mode, l.act_scale);
  }
  return *slot;
}

bool NetPlan::run_layer(Arena& a, int index, std::int64_t n,
                        const std::vector<std::int64_t>& shape, PlanEngine engine,
                        const char* isa, int threads, bool pool2, float* dst) {
  const Layer& layer = layers_[static_cast<std::size_t>(index)];
  const PlanLayer& l = layer.spec;
  const bool conv = l.in_channels > 0;
  const std::int64_t out_features = l.planes.rows, k = l.planes.k;
  std::int64_t oh = 1, ow = 1, h = 1, w = 1, c = l.in_features;
  if (conv) {
    c = shape[0], h = shape[1], w = shape[2];
    oh = (h + 2 * l.ph - l.kh) / l.sh + 1;
    ow = (w + 2 * l.pw - l.kw) / l.sw + 1;
  }
  const std::int64_t rows = n * oh * ow;
  // (a forced engine was checked against every layer by run: check_forced)
  const PlanEngine chosen = engine == PlanEngine::kAuto ? engine_of(index, rows) : engine;
  // the engines whose products come back as int32 (the scaling a separate pass)
  const bool ternary = chosen == PlanEngine::kTernary || chosen == PlanEngine::kSparse;
  a.next.resize(static_cast<std::size_t>(dst ? 0 : rows * out_features));
  float* const y_out = dst ? dst : a.next.data();  // the caller's output for a last layer
  if (chosen == PlanEngine::kBitserial) {
    const float* x = a.src;
    if (conv) {
      a.cols.resize(static_cast<std::size_t>(rows * l.in_features));
      im2col_nhwc(a.src, n, h, w, c, l, oh, ow, a.cols.data(), l.in_features, false, threads);
      x = a.cols.data();
    }
    if (l.input_index != nullptr) {
      a.tmp.resize(static_cast<std::size_t>(rows * k));
      gather_columns(x, rows, l.in_features, l.input_index, k, a.tmp.data(), k, threads);
      x = a.tmp.data();
    }
    bitserial_of(a, index).forward(x, rows, y_out, isa, threads);
    return false;
  }
  // a 2 x 2 max pooling after a convolution on the direct engine is taken in its epilogue
  // (direct_gemm's pool4): the im2col rows come window by window, only those the pooling keeps
  const bool fuse = pool2 && conv && chosen == PlanEngine::kDirect && oh >= 2 && ow >= 2;
  const std::int64_t gemm_rows = fuse ? n * (oh / 2) * (ow / 2) * 4 : rows;
  // VNNI: the input quantized to bytes once (per sample; a convolution's zero padding is code
  // 0), then the product's rows as bytes, the GEMM into int32 and the scaling.
  const std::int64_t sample = conv ? h * w * c : l.in_features;
  static const QuantizeRows quantize = best_quantizer();
  a.codes.resize(static_cast<std::size_t>(n * sample));
  a.code_sums.resize(static_cast<std::size_t>(n));
  const float* x = a.src;
  const float* scale = &l.act_scale;
  std::uint8_t* codes = a.codes.data();
  std::int64_t* sums = a.code_sums.data();
  const int bits = l.act_bits;
  const CodeMode mode = l.act_mode;
  {
    std::int64_t slot = 0;
    std::mutex slot_mutex;
    split_rows(n, sample, threads, [&](std::int64_t r0, std::int64_t r1) {
      std::int64_t mine = 0;
      quantize(x, scale, 0, r0, r1, sample, bits, mode, codes + r0 * sample, sums, mine);
      std::lock_guard<std::mutex> lock(slot_mutex);
      slot += mine;
    });
    if (slot)
      throw std::invalid_argument("a layer's input has " + std::to_string(slot) +
                                  " NaN or infinite entries");
  }
  // the product's rows of codes: the ternary kernel reads rows of k bytes, the direct one rows
  // padded with zeros to whole groups of 4
  const std::int64_t stride = ternary ? k : direct_padded_k(k);
  const std::uint8_t* rows_codes = codes;
  if (conv && l.input_index == nullptr) {
    a.code_cols.resize(static_cast<std::size_t>(gemm_rows * stride));
    im2col_nhwc(codes, n, h, w, c, l, oh, ow, a.code_cols.data(), stride, fuse, threads);
    rows_codes = a.code_cols.data();
  } else if (conv) {
    a.code_cols.resize(static_cast<std::size_t>(gemm_rows * l.in_features));
    im2col_nhwc(codes, n, h, w, c, l, oh, ow, a.code_cols.data(), l.in_features, fuse, threads);
    a.codes.resize(static_cast<std::size_t>(gemm_rows * stride));
    gather_columns(a.code_cols.data(), gemm_rows, l.in_features, l.input_index, k, a.codes.data(),
                   stride, threads);
    rows_codes = a.codes.data();
  } else if (l.input_index != nullptr || stride != k) {
    a.code_cols.resize(static_cast<std::size_t>(rows * stride));
    if (l.input_index != nullptr) {
      gather_columns(codes, rows, l.in_features, l.input_index, k, a.code_cols.data(), stride,
                     threads);
    } else {
      for (std::int64_t r = 0; r < rows; ++r) {
        std::memcpy(a.code_cols.data() + r * stride, codes + r * k, static_cast<std::size_t>(k));
        std::memset(a.code_cols.data() + r * stride + k, 0, static_cast<std::size_t>(stride - k));
      }
    }
    rows_codes = a.code_cols.data();
  }
  if (!ternary) {
    DirectEpilogue e;
    e.row_scale = l.row_scale;
    e.bias = l.bias;
    e.act_scale = l.act_scale;
    DirectPath path = DirectPath::kBest;
    if (isa != nullptr) {
      const std::string name = isa;
      if (name != "portable" && name != "avx2" && name != "avx512vnni" && name != "amx")
        throw std::invalid_argument(
            "the direct engine's isa is 'portable', 'avx2', 'avx512vnni' or 'amx'");
      path = name == "portable" ? DirectPath::kPortable
             : name == "avx2"   ? DirectPath::kAvx2
             : name == "amx"    ? DirectPath::kAmx
                                : DirectPath::kVnni;
    }

    direct_gemm(rows_codes, gemm_rows, stride, mode == CodeMode::kSigned, layer.direct, e,
                y_out, path, threads, fuse, direct_act_max(bits, mode == CodeMode::kSigned));
    return fuse;
  }
  a.acc.resize(static_cast<std::size_t>(rows * out_features));
  if (chosen == PlanEngine::kSparse)
    sparse_ternary_gemm(rows_codes, rows, mode == CodeMode::kSigned, layer.sparse.view,
                        a.acc.data(), isa, threads);
  else
    ternary_gemm(rows_codes, rows, mode == CodeMode::kSigned, l.ternary, a.acc.data(), isa,
                 threads);
  // float32, in the reference's order: ((acc * row_scale) * act_scale) + bias
  const std::int32_t* acc = a.acc.data();
  float* y = y_out;
  const float act_scale = l.act_scale;
  split_rows(rows, out_features, threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r)
      for (std::int64_t o = 0; o < out_features; ++o) {
        float v = static_cast<float>(acc[r * out_features + o]) * l.row_scale[o];
        v = v * act_scale;
        y[r * out_features + o] = v + l.bias[o];
      }
  });
  return false;
}

void NetPlan::check_forced(int index, PlanEngine engine, const char* isa) const {
  if (engine == PlanEngine::kAuto || engine == PlanEngine::kBitserial) return;
  const Layer& layer = layers_[static_cast<std::size_t>(index)];
  const PlanLayer& l = layer.spec;
  const char* name = engine == PlanEngine::kTernary  ? "ternary"
                     : engine == PlanEngine::kSparse ? "sparse"
                                                     : "direct";
  if (engine == PlanEngine::kTernary && l.ternary.codes == nullptr)
    throw std::invalid_argument("the ternary engine needs ternary rows");
  if (engine == PlanEngine::kSparse && layer.sparse.view.rows == 0)
    throw std::invalid_argument("the sparse engine needs ternary rows");
  if (engine == PlanEngine::kDirect && l.codes == nullptr)
    throw std::invalid_argument("the direct engine needs the weight codes");
  if (l.act_mode == CodeMode::kPlusMinusOne)
    throw std::invalid_argument(std::string("the ") + name + " engine needs 8-bit codes, not pm1");
  if (engine == PlanEngine::kDirect && isa != nullptr && std::string(isa) == "avx2" &&
      direct_avx2_steps(direct_act_max(l.act_bits, l.act_mode == CodeMode::kSigned),
                        layer.direct.max_abs) < 1)
    throw std::invalid_argument("layer " + std::to_string(index) +
                                ": the direct engine's AVX2 path's 16-bit sums could saturate "
                                "(2 * act_max * max|w| > 32767)");
}

void NetPlan::run(const float* x, std::int64_t n, const std::vector<std::int64_t>& shape,
                  float* out, PlanEngine engine, const char* isa, int num_threads) {
  if (n < 1) throw std::invalid_argument("NetPlan: the batch must have >= 1 samples");
  // a forced engine must run every layer (in the order of the checks: the engine, then its path)
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i) check_forced(i, engine, nullptr);
  for (int i = 0; i < static_cast<int>(layers_.size()); ++i) check_forced(i, engine, isa);
  const std::vector<std::int64_t> out_shape = output_shape(shape);
  const std::int64_t size = product(shape), out_size = product(out_shape);
  std::lock_guard<std::mutex> lock(mutex_);
  // The batch goes through the whole net in slices of at most about kSliceBytes of activations,
  // which bounds the arenas for big batches. (Slices that fit L2, 1 MB, were measured slower:
  // each slice pays the fixed costs of every step again.) Not when the weights pass the cache:
  // every slice would read them again; then the threads share each step's work instead.
  const int threads = std::max(1, num_threads);
  if (weight_bytes_ > kSliceBytes || threads == 1 || n < 2 * threads) {
    const std::int64_t slice = weight_bytes_ > kSliceBytes
                                   ? n
                                   : std::max<std::int64_t>(8, kSliceBytes / sample_bytes(shape));
    for (std::int64_t at = 0; at < n; at += slice)
      run_slice(arena(0), x + at * size, std::min(slice, n - at), shape, out + at * out_size,
                engine, isa, threads);
    return;
  }
  // Small weights and a batch of at least two samples per thread: each thread runs the whole net
  // on its own slices with its own arena, one thread per product, and the threads never wait
  // for each other between steps (sharing each step instead gained little: LeNet-5 at batch
  // 256, 7.2 ms on one thread, 5.4 on two).
  const std::int64_t slice = std::min<std::int64_t>(
      (n + threads - 1) / threads, std::max<std::int64_t>(8, kSliceBytes / sample_bytes(shape)));
  const std::int64_t slices = (n + slice - 1) / slice;
  const int workers = static_cast<int>(std::min<std::int64_t>(threads, slices));
  for (int t = 0; t < workers; ++t) arena(t);  // made here, not by the workers
  parallel_for(workers, [&](int t) {
    for (std::int64_t i = t; i < slices; i += workers) {
      const std::int64_t at = i * slice;
      run_slice(*arenas_[static_cast<std::size_t>(t)], x + at * size, std::min(slice, n - at),
                shape, out + at * out_size, engine, isa, 1);
    }
  });
}

std::int64_t NetPlan::sample_bytes(const std::vector<std::int64_t>& shape) const {
  std::vector<std::int64_t> s = shape;
  std::int64_t most = product(s) * 4;
  for (const Step& st : steps_) {
    const std::int64_t in = product(s);
    std::int64_t scratch = 0;
    if (st.kind == PlanStep::kLayer) {
      const PlanLayer& l = layers_[static_cast<std::size_t>(st.layer)].spec;
      if (l.in_channels == 0) {
        s = {l.planes.rows};
        scratch = l.in_features;  // the codes
      } else {
        const std::int64_t oh = (s[1] + 2 * l.ph - l.kh) / l.sh + 1;
        const std::int64_t ow = (s[2] + 2 * l.pw - l.kw) / l.sw + 1;
        scratch = in + oh * ow * l.in_features;  // the codes and their im2col rows
        s = {l.planes.rows, oh, ow};
      }
    } else if (st.kind == PlanStep::kMaxPool || st.kind == PlanStep::kAvgPool) {
      s = {s[0], s[1] / st.pool, s[2] / st.pool};
    } else if (st.kind == PlanStep::kFlatten) {
      s = {product(s)};
    }
    most = std::max(most, (in + product(s)) * 4 + scratch);
  }
  return std::max<std::int64_t>(1, most);
}

void NetPlan::run_slice(Arena& a, const float* x, std::int64_t n,
                        const std::vector<std::int64_t>& shape,
                        float* out, PlanEngine engine, const char* isa, int num_threads) {
  const int threads = std::max(1, num_threads);
  std::vector<std::int64_t> s = shape;  // torch's order: (C, H, W) or (F,)
  const std::int64_t size = product(s);
  // NaN on the bits (exponent all ones, mantissa not 0), no early exit, int32 lanes: this loop
  // vectorizes, where `nan |= x[i] != x[i]` stayed a scalar loop as long as a small layer
  std::int32_t nan = 0;
  for (std::int64_t i = 0; i < n * size; ++i) {
    std::int32_t bits;
    std::memcpy(&bits, x + i, sizeof bits);
    nan |= (bits & 0x7fffffff) > 0x7f800000;
  }
  if (nan) throw std::invalid_argument("x contains NaN");
  // the last step, when it is a layer whose output needs no reordering, writes into out itself
  const bool last_into_out =
      !steps_.empty() && steps_.back().kind == PlanStep::kLayer &&
      layers_[static_cast<std::size_t>(steps_.back().layer)].spec.in_channels == 0;
  // a.src: the current activations, the caller's x itself until a step writes new ones
  a.src = x;
  if (s.size() == 3 && s[0] > 1 && s[1] * s[2] > 1) {
    a.cur.resize(static_cast<std::size_t>(n * size));
    transpose_samples(x, n, s[0], s[1] * s[2], a.cur.data());  // to channels-last
    a.src = a.cur.data();
  }
  // BAYESQ_PLAN_PROFILE=1 prints each step's wall time to stderr (where a forward spends it)
  static const bool profile = std::getenv("BAYESQ_PLAN_PROFILE") != nullptr;
  for (std::size_t at = 0; at < steps_.size(); ++at) {
    const Step& st = steps_[at];
    const auto t0 = std::chrono::steady_clock::now();
    const std::int64_t elems = n * product(s);
    switch (st.kind) {
      case PlanStep::kLayer: {

        const bool pool2 = at + 1 < steps_.size() && steps_[at + 1].kind == PlanStep::kMaxPool &&
                           steps_[at + 1].pool == 2;
        float* dst = last_into_out && at + 1 == steps_.size() ? out : nullptr;
        const bool pooled = run_layer(a, st.layer, n, s, engine, isa, threads, pool2, dst);
        if (dst != nullptr) return;  // done: out holds the logits
        a.cur.swap(a.next);
        a.src = a.cur.data();
        const PlanLayer& l = layers_[static_cast<std::size_t>(st.layer)].spec;
        if (l.in_channels == 0) {
          s = {l.planes.rows};
        } else {
          s = {l.planes.rows, (s[1] + 2 * l.ph - l.kh) / l.sh + 1,
               (s[2] + 2 * l.pw - l.kw) / l.sw + 1};
        }
        if (pooled) {  // the pooling step is done
          s = {s[0], s[1] / 2, s[2] / 2};
          ++at;
        }
        break;
      }
      case PlanStep::kRelu:
        a.next.resize(static_cast<std::size_t>(elems));
        for (std::int64_t i = 0; i < elems; ++i) a.next[i] = a.src[i] < 0.0f ? 0.0f : a.src[i];
        a.cur.swap(a.next);
        a.src = a.cur.data();
        break;
      case PlanStep::kSign:
        a.next.resize(static_cast<std::size_t>(elems));
        for (std::int64_t i = 0; i < elems; ++i) a.next[i] = a.src[i] >= 0.0f ? 1.0f : -1.0f;
        a.cur.swap(a.next);
        a.src = a.cur.data();
        break;
      case PlanStep::kMaxPool:
      case PlanStep::kAvgPool:
        a.next.resize(static_cast<std::size_t>(n * s[0] * (s[1] / st.pool) * (s[2] / st.pool)));
        pool_nhwc(a.src, n, s[1], s[2], s[0], st.pool, st.kind == PlanStep::kAvgPool,
                  a.next.data(), threads);
        a.cur.swap(a.next);
        a.src = a.cur.data();
        s = {s[0], s[1] / st.pool, s[2] / st.pool};
        break;
      case PlanStep::kFlatten:
        if (s.size() == 3 && s[0] > 1 && s[1] * s[2] > 1) {  // channels-last to (C, H, W) order
          a.next.resize(static_cast<std::size_t>(elems));
          transpose_samples(a.src, n, s[1] * s[2], s[0], a.next.data());
          a.cur.swap(a.next);
          a.src = a.cur.data();
        }
        s = {product(s)};
        break;
    }
    if (profile)
      std::fprintf(stderr, "NetPlan step %d (layer %d): %.3f ms\n", static_cast<int>(st.kind),
                   st.layer,
                   std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0)
                       .count());
  }
  const std::int64_t out_size = product(s);  // s is the output shape now (run checked it)
  if (s.size() == 3 && s[0] > 1)
    transpose_samples(a.src, n, s[1] * s[2], s[0], out);
  else
    std::memcpy(out, a.src, static_cast<std::size_t>(n * out_size) * sizeof(float));
}

}  // namespace bayesq
