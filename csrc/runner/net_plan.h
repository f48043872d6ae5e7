// A whole discrete net in one native call: a compiled plan of its layers and glue ops, run over
// a batch with every intermediate in a scratch arena reused across calls (bayesq.runtime's
// DiscreteNet.forward).
//
// Per quantized layer (weights W, codes of one width per row, row_scale, bias, activation bits,
// mode and scale, exactly as bayesq.runtime.QuantizedLinear):
//   codes  = clamp(round(x / act_scale), lo, hi)
//   y[r,n] = (codes[r] . W[n]) * row_scale[n] * act_scale + bias[n]     (float32, that order)
// on one of four engines, chosen per layer and per call by its widths and its rows (engine_of):
//   * bit-serial (BitserialLinear: quantize and pack the float input in one pass, popcount GEMM,
//     the scaling fused into its store), for every layer;
//   * direct (direct_gemm.h: activation bytes x weight bytes of any width; AVX-512 VNNI, AMX, or
//     AVX2 where its int16 sums are exact), the scaling and a 2 x 2 max pooling in its store;
//   * ternary (ternary rows, lowbit/ternary_gemm.h: 2-bit weights on VNNI, AMX or AVX2) and
//     sparse (ternary rows, lowbit/sparse_ternary.h: the kept weights only), both into int32,
//     the scaling in a separate pass, float32 operations in the reference's order.
// The byte engines take the input quantized to bytes by the bit-serial quantizer
// (quantize_rows_*). A convolution (groups 1, zero padding) is an im2col followed by the linear
// product; on the byte engines the image is quantized once and the im2col copies bytes (zero
// padding is code 0), on the bit-serial engine the im2col copies floats. Images are (C, H, W)
// per sample, as torch's NCHW.
//
// Glue between layers: ReLU, sign (+1 where x >= 0), k x k max and average pooling with stride
// k, flatten. A glue op the next layer's quantizer already applies is not in the plan at all
// (the Python side leaves it out: the unsigned quantizer clamps at 0, the +-1 quantizer takes
// the sign). The average pool sums a window row by row in float32 and divides by k * k, which is
// what torch's CPU kernel does (the tests hold the plan to torch's reference bit for bit).
#ifndef BAYESQ_NET_PLAN_H_
#define BAYESQ_NET_PLAN_H_

#include <cstdint>
#include <memory>
#include <mutex>
#include <utility>
#include <vector>

#include "bitserial/bitpack.h"
#include "bitserial/bitserial_linear.h"
#include "lowbit/sparse_ternary.h"
#include "lowbit/ternary_gemm.h"
#include "runner/direct_gemm.h"

namespace bayesq {

// The weights and settings of one quantized layer. Every pointer is borrowed: the caller keeps
// the arrays alive and unchanged for the plan's life.
struct PlanLayer {
  BitPlanesView planes;            // the bit-serial form (every layer)
  std::int64_t planes_size = 0;    // words in planes.planes
  TernaryWeightsView ternary;      // the 2-bit form; codes == nullptr when the rows are not ternary
  bool ternary_by_default = false;    // ternary rows, 2..8-bit codes, a fast ternary path (VNNI, AMX, AVX2)
  const std::int8_t* codes = nullptr;  // the weight codes (rows x k, row-major): the direct engine
  const float* row_scale = nullptr;
  const float* bias = nullptr;     // out_features entries
  int act_bits = 8;
  CodeMode act_mode = CodeMode::kUnsigned;
  float act_scale = 1.0f;
  const std::int64_t* input_index = nullptr;  // nullptr, or planes.k column indices to gather
  std::int64_t in_features = 0;    // the input's width before gathering (planes.k without one)
  // a convolution: in_channels > 0 (then in_features = in_channels * kh * kw)
  int in_channels = 0, kh = 1, kw = 1, sh = 1, sw = 1, ph = 0, pw = 0;
};

enum class PlanStep : int { kLayer = 0, kRelu = 1, kSign = 2, kMaxPool = 3, kAvgPool = 4, kFlatten = 5 };
enum class PlanEngine : int { kAuto = -1, kBitserial = 0, kTernary = 1, kDirect = 2, kSparse = 3 };

class NetPlan {
 public:
  // Appends a layer (checked: throws std::invalid_argument on a layout the kernels cannot read).
  void add_layer(const PlanLayer& layer);
  // Appends a glue op; `pool` is the window of the pooling steps (>= 1), ignored otherwise.
  void add_glue(PlanStep kind, int pool);

  // The shape of one sample after the whole plan, for a sample of `shape` ((C, H, W) or (F,));
  // throws std::invalid_argument naming the step a shape does not fit.
  std::vector<std::int64_t> output_shape(const std::vector<std::int64_t>& shape) const;

  // The engine kAuto picks for layer `layer` (0-based, in the order added) when its product has
  // `rows` rows (a linear layer's batch, a convolution's batch * oh * ow): bit-serial for +-1 or
  // 1-bit activations (popcounts); for weights that as bytes would pass kTernaryWeights, when
  // the direct GEMM would not take its AMX path (fewer than kDirectAmxMinRows rows), the ternary
  // 2-bit GEMM for ternary rows (ternary_by_default; where the direct GEMM has VNNI but no AMX,
  // only below kDirectOverTernaryMinRows rows) and the bit-serial one for others below
  // kBitserialMaxRows rows or with few planes: there the product is bound by reading the
  // weights, and both read their width, not a byte, per weight;
  // the direct GEMM (direct_gemm.h) for the rest where it has a fast path (direct_fast); else the ternary
  // GEMM for ternary rows, bit-serial otherwise. Measured per layer, 1 thread, CPU time: the direct
  // GEMM beats the ternary one up to 1024 x 1024 at every batch (LeNet-300's 784 x 300 at
  // batch 256: 0.34 against 0.74 ms), the ternary one wins at 4096 x 4096 at small batches
  // (batch 8: 0.69 against 0.89 ms; it takes AMX tiles itself from 5 rows on), at batch 256 the
  // two are even (5.3 and 4.9 ms); both beat the bit-serial layer from batch 1 on with 4- and 8-bit codes.
  static constexpr std::int64_t kTernaryWeights = std::int64_t(1) << 21;
  // For such weights, not ternary, below the AMX rows: bit-serial below kBitserialMaxRows rows
  // (bound by reading the weights' planes: 4096 x 4096, 4 x 4 bits at batch 1, 142 GOP/s
  // against the direct GEMM's bytes, about 56) or with at most kBitserialMaxPlanePairs weight x
  // activation planes (its throughput goes as 1 / planes: at batch 64, 2 threads, 3560 / 1800 /
  // 950 / 500 / 250 GOP/s for 1x1 / 1x2 / 2x2 / 2x4 / 4x4 bits, the direct VNNI GEMM about 520).
  static constexpr std::int64_t kBitserialMaxRows = 16;
  static constexpr int kBitserialMaxPlanePairs = 4;
  PlanEngine engine_of(int layer, std::int64_t rows) const;
  // True when the direct GEMM has a fast path for layer `layer`: AVX-512 VNNI, or AVX2 where its
  // int16 sums are exact for the layer's widths (direct_avx2_steps).
  bool direct_fast(int layer) const;
  // The sparse engine (lowbit/sparse_ternary.h: the kept weights only, additions) takes a layer
  // of ternary rows with few non-zero weights where the dense products have no AMX:
  //  * dense 2-bit GEMM on AVX2 (no VNNI): at most kSparseMaxKept of the weights non-zero, from
  //    kSparseMinRows rows. Measured on Zen 3, 2 threads, N = K = 4096 at 80% zeros: 446 / 427
  //    GOP/s at batch 64 / 1024 against the dense AVX2 kernel's 230 / 257; at batch 1 18 against
  //    178 (its gather form). As layers (8-bit codes, 1 thread, CPU ms: direct / ternary /
  //    sparse): 784 x 300 at 80% zeros, batch 16 0.134 / 0.141 / 0.087, batch 256 1.53 / 2.44 /
  //    0.86; 800 x 500, batch 256 1.30 / 2.13 / 0.72; at 50% zeros the direct GEMM wins (batch
  //    256: 0.93 / 1.33 / 1.16); 4096 x 4096 at 80%, batch 16 6.7 / 5.4 / 3.0.
  //  * VNNI without AMX (Zen 4, Ice Lake): against the direct VNNI GEMM, in layers of
  //    kTernaryWeights or more, at most kSparseVnniMaxKept non-zero from kSparseVnniMinRows rows,
  //    or at most kSparseVnniSparseKept from kSparseMinRows rows. Measured on Zen 4 (AVX-512
  //    VNNI, 1 thread, CPU ms, direct / sparse) at 80% zeros: 784 x 300 at 64 rows 0.119 / 0.105,
  //    at 128 rows 0.178 / 0.196 (even); 800 x 500 at 128 rows 0.278 / 0.269; 784 x 4096 at 64
  //    rows 1.03 / 0.83; 2048 x 2048 at 128 rows 2.60 / 2.03; 4096 x 4096 at 256 rows 20.0 /
  //    13.9; at 16 rows the direct GEMM wins (4096 x 4096: 1.71 / 2.18). At 90% zeros from 16
  //    rows in the large layers (2048 x 2048: 0.41 / 0.30; 4096 x 4096: 2.07 / 1.05) but not in
  //    784 x 300 (0.028 / 0.035). At 70% zeros the two are within 10% in large layers and the
  //    direct GEMM wins in small ones (784 x 300 at 128 rows: 0.23 / 0.30). In small layers the
  //    sparse engine is at best even (800 x 500) and lost as a whole net: LeNet-300 (80% zeros)
  //    at batch 256 on 2 threads, 0.40 ms with its two hidden layers sparse, 0.31 direct.
  //  * AMX: never by default; its dense tiles win until about 90% zeros
  //    (bayesq.sparse_ternary_gemm.prefer_sparse).
  static constexpr std::int64_t kSparseMinRows = 16;
  static constexpr double kSparseMaxKept = 0.3;
  static constexpr std::int64_t kSparseVnniMinRows = 64;
  static constexpr double kSparseVnniMaxKept = 0.25;
  static constexpr double kSparseVnniSparseKept = 0.12;
  // Large ternary layers (kTernaryWeights) on a CPU with the direct VNNI GEMM but no AMX: the
  // 2-bit GEMM wins while reading the weights bounds the product, the direct GEMM from this many
  // rows on. Measured on Zen 4 (1 thread, CPU ms, ternary / direct) at 80% zeros: 4096 x 4096
  // at 4 rows 0.51 / 0.60, 16 rows 1.93 / 1.71, 64 rows 6.86 / 5.17, 256 rows 26.6 / 20.0;
  // 784 x 4096 at 16 rows 0.52 / 0.25; 2048 x 2048 at 16 rows 0.47 / 0.34.
  static constexpr std::int64_t kDirectOverTernaryMinRows = 16;
  // Throws std::invalid_argument when a forced engine (and path) cannot run layer `layer`.
  void check_forced(int layer, PlanEngine engine, const char* isa) const;

  // out (n x prod(output_shape)) = the plan on x (n samples of `shape`, contiguous float32).
  // engine: kAuto takes each layer's engine_of; a forced kTernary on a layer without ternary rows,
  // or a forced kTernary or kDirect on one with +-1 codes, throws. isa: the forced engine's path name
  // (bit-serial or ternary; for the direct engine "portable" is its reference), nullptr for the
  // best. Throws std::invalid_argument if a quantizer
  // meets NaN or infinity. Calls from several threads take turns (one arena).
  void run(const float* x, std::int64_t n, const std::vector<std::int64_t>& shape, float* out,
           PlanEngine engine, const char* isa, int num_threads);

 private:
  struct Step {
    PlanStep kind;
    int layer = -1;
    int pool = 1;
  };
  struct Arena;  // below
  // The kept weights of ternary rows for the sparse engine (lowbit/sparse_ternary.h), packed
  // from the codes when the rows are ternary.
  struct SparseWeights {
    std::vector<std::uint8_t> offsets, counts;
    std::vector<std::int64_t> starts;
    std::vector<std::int32_t> row_sums;
    SparseTernaryView view;  // into the vectors above; rows == 0 when not packed
    double kept = 1.0;       // the fraction of non-zero weights
  };
  struct Layer {
    PlanLayer spec;
    DirectWeights direct;  // packed when the codes are given
    SparseWeights sparse;  // packed when the rows are ternary and the codes are given
  };
  // Whether the sparse engine beats the dense ones for layer `layer` at `rows` rows.
  bool sparse_pays(int layer, std::int64_t rows) const;
  // The bytes one sample's activations and scratch take at the widest step; a run goes through
  // the net kSliceBytes of them at a time (16 MB: a batch of 256 LeNet-5 images in one slice).
  static constexpr std::int64_t kSliceBytes = std::int64_t(1) << 24;
  std::int64_t sample_bytes(const std::vector<std::int64_t>& shape) const;
  void run_slice(Arena& a, const float* x, std::int64_t n, const std::vector<std::int64_t>& shape,
                 float* out, PlanEngine engine, const char* isa, int num_threads);
  // The pieces of run(), on the arena.
  // Runs a layer into a.next, or into dst when given (the run's output, for a last layer); with
  // pool2 (a 2 x 2 max pooling follows) it may fuse the pooling and returns whether it did.
  bool run_layer(Arena& a, int index, std::int64_t n, const std::vector<std::int64_t>& shape,
                 PlanEngine engine, const char* isa, int threads, bool pool2, float* dst);

  std::vector<Layer> layers_;
  std::int64_t weight_bytes_ = 0;  // the layers' weights as bytes
  std::vector<Step> steps_;
  std::mutex mutex_;
  // A buffer that grows and never shrinks, and is filled only when it grows (a std::vector's
  // resize would zero megabytes on every call of a batch-256 forward).
  template <typename T>
  struct Scratch {
    std::unique_ptr<T[]> data_;
    std::size_t capacity_ = 0, size_ = 0;
    // 64 elements of slack past n: the im2col copies short runs with whole 8- and 16-byte
    // moves that may spill (and read) a little past a row
    void resize(std::size_t n) {
      if (n > capacity_) data_.reset(new T[n + 64]()), capacity_ = n;
      size_ = n;
    }
    T* data() { return data_.get(); }
    T& operator[](std::size_t i) { return data_[i]; }
    void swap(Scratch& o) {
      data_.swap(o.data_);
      std::swap(capacity_, o.capacity_);
      std::swap(size_, o.size_);
    }
  };
  // What one thread runs a slice on: the current activations, the next ones, the scratch of a
  // layer, and its own bit-serial layers (a BitserialLinear's scratch is its own: two threads
  // sharing one would take turns).
  struct Arena {
    Scratch<float> cur, next, cols, tmp;
    const float* src = nullptr;  // the current activations: x, or cur once a step has run
    Scratch<std::uint8_t> codes, code_cols;
    Scratch<std::int32_t> acc;
    Scratch<std::int64_t> code_sums;
    std::vector<std::unique_ptr<BitserialLinear>> bitserial;  // by layer, made on first use
  };
  std::vector<std::unique_ptr<Arena>> arenas_;  // by thread of a run
  Arena& arena(int t);
  BitserialLinear& bitserial_of(Arena& a, int layer);
};

}  // namespace bayesq

#endif  // BAYESQ_NET_PLAN_H_
