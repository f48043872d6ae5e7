// The blocked, register-tiled bit-serial GEMM driver, shared by the SIMD variants: included once
// per ISA file, which supplies the microkernel. Not a public header.
//
// The product is a binary GEMM between plane rows: every activation plane row against every
// weight plane row, popcount(a AND w) (or XOR) over the k words; then each output (n, m) is the
// sum over the planes i of row n and j of row m of c_i d_j count(i, j), plus init(n, m).
// The counting is linear, so the work splits freely:
//   * over k: each k block adds its partial counts (cache blocking over k);
//   * over plane rows: a register tile of RA activation planes x RW weight planes may straddle
//     output rows, and mixed widths per row need no padding to the widest.
// Loop nest, outermost first:
//   weight row block   (its plane rows x kc words stay in L2)
//   activation rows    (a block whose count block, planes x planes uint32, stays in L1)
//   k block            (kc words)
//   activation tile    (RA <= 4 plane rows: kept in L1 while the weight tiles stream past)
//   weight tile        (RW plane rows) -> microkernel -> RA x RW counts into the count block
// and once the k blocks are done, the combine step turns the count block into outputs: per
// activation row, its planes' counts folded into one vector over the weight planes, then a pass
// over the weight rows (vectorized when the block's weight rows share one width), then the
// float or int32 store.
// With at most 4 activation plane rows in a row block (batch 1 with <= 4 bits: the GEMV case)
// a single tile holds all of them, so every weight word is loaded once per k block.
//
// Reads past an end: a weight tile may start at the block's last plane row and read RW - 1 <=
// kPlaneRowPad plane rows beyond it (other real rows, or the zero padding rows after the last);
// it writes their counts into the count block's kCountPad spare columns, which nothing reads.
// Activation tiles never extend past the block.
//
// The microkernel, a struct Kernel with
//   template <int RA> static constexpr int rw();    the weight tile height for RA (<= 8)
//   template <int RA, int RW, bool kXor> static void tile(const word_t* a, const word_t* w,
//       std::int64_t stride, std::int64_t k0, std::int64_t k1, std::uint32_t* counts,
//       std::int64_t ld, bool add);
// sets (add: adds to) counts[i * ld + j] the sum over words [k0, k1) of popcount(a_i op w_j),
// plane row i at a + i * stride, j at w + j * stride; k0 < k1, multiples of kPlaneWordAlign.
#ifndef BAYESQ_BITSERIAL_GEMM_TILED_H_
#define BAYESQ_BITSERIAL_GEMM_TILED_H_

#include <new>

#include "bitserial/bitserial_gemm.h"

namespace bayesq {
// Everything here has internal linkage: each ISA file gets its own copy, compiled with its flags,
// and none of them can stand in for another's at link time. No standard-library templates either
// (their out-of-line copies would be shared between the files).
namespace {
namespace tiled {

constexpr std::int64_t kKBlockWords = 512;             // 32768 positions: 4 KiB per plane row
constexpr std::int64_t kWeightBlockBytes = 384 << 10;  // a weight row block's plane rows x kc
constexpr std::int64_t kCountBlockEntries = 4096;      // 16 KiB of uint32 counts
constexpr std::int64_t kCountPad = 8;                  // spare columns for a tile's overhang

BAYESQ_ALWAYS_INLINE std::int64_t min64(std::int64_t a, std::int64_t b) { return a < b ? a : b; }
BAYESQ_ALWAYS_INLINE std::int64_t max64(std::int64_t a, std::int64_t b) { return a < b ? b : a; }

// Scratch memory without std::vector (see above); operator new[] lives in the C++ runtime.
struct Buffer {
  std::uint32_t* data;
  explicit Buffer(std::int64_t n) : data(new std::uint32_t[static_cast<std::size_t>(n)]) {}
  ~Buffer() { delete[] data; }
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
};

struct Block {
  std::int64_t n0, n1, m0, m1;  // output rows and columns of the block
  std::int64_t pa0, pa1;        // its activation plane rows
  std::int64_t pw0, pw1;        // its weight plane rows
  std::int64_t k0, k1;          // the words of this k block
  std::uint32_t* counts;        // (pa1 - pa0) x ld: counts[(pa - pa0) * ld + (pw - pw0)]
  std::int64_t ld;              // pw1 - pw0 + kCountPad
  int uniform_bits;             // the width every weight row of the block has, or -1
};

template <class Kernel, int RA, bool kXor>
void sweep(const GemmProblem& p, const Block& b, std::int64_t pa) {
  constexpr int RW = Kernel::template rw<RA>();
  static_assert(RW - 1 <= kPlaneRowPad && RW <= kCountPad, "a tile overhangs at most 8 rows");
  const std::int64_t stride = p.a.words;
  const word_t* a = p.a.plane(pa);
  std::uint32_t* counts = b.counts + (pa - b.pa0) * b.ld;
  const bool add = b.k0 > 0;
  for (std::int64_t pw = b.pw0; pw < b.pw1; pw += RW)
    Kernel::template tile<RA, RW, kXor>(a, p.w.plane(pw), stride, b.k0, b.k1, counts + (pw - b.pw0),
                                        b.ld, add);
}

template <class Kernel, bool kXor>
void run_tiles(const GemmProblem& p, const Block& b) {
  std::int64_t pa = b.pa0;
  for (; pa + 4 <= b.pa1; pa += 4) sweep<Kernel, 4, kXor>(p, b, pa);
  switch (b.pa1 - pa) {
    case 1: return sweep<Kernel, 1, kXor>(p, b, pa);
    case 2: return sweep<Kernel, 2, kXor>(p, b, pa);
    case 3: return sweep<Kernel, 3, kXor>(p, b, pa);
    default: return;
  }
}

// acc[m] += sum_j d_j folded[m * B + j] over the block's rows, all of width B.
template <int B>
BAYESQ_ALWAYS_INLINE void combine_uniform(std::uint32_t* __restrict acc,
                                          const std::uint32_t* __restrict folded,
                                          const std::int32_t* __restrict coef, std::int64_t rows) {
  for (std::int64_t m = 0; m < rows; ++m) {
    std::uint32_t s = 0;
    for (int j = 0; j < B; ++j)
      s += static_cast<std::uint32_t>(coef[m * B + j]) * folded[m * B + j];
    acc[m] += s;
  }
}

// Turns the block's counts into its outputs, one activation row n at a time, in two steps:
//   folded[pw] = sum over the planes i of row n of c_i counts(i, pw)   (vectorized over pw)
//   acc[m]    += sum over the planes j of weight row m of d_j folded[j]
// so the per-row gather of mixed widths runs once per activation row, not once per plane.
// `folded` is scratch of at least pw1 - pw0 entries.
BAYESQ_ALWAYS_INLINE void combine(const GemmProblem& p, const Block& b, std::uint32_t* acc,
                                  std::uint32_t* __restrict folded) {
  const std::int64_t rows = b.m1 - b.m0, planes = b.pw1 - b.pw0;
  const std::int32_t* coef = p.w_coef + b.pw0;
  for (std::int64_t n = b.n0; n < b.n1; ++n) {
    p.init_row(n, b.m0, b.m1, acc);
    const std::int64_t pa_begin = p.a.plane_offsets[n], pa_end = p.a.plane_offsets[n + 1];
    if (pa_begin < pa_end && planes > 0) {
      {
        const std::uint32_t ca = static_cast<std::uint32_t>(p.a_coef[pa_begin]);
        const std::uint32_t* __restrict counts = b.counts + (pa_begin - b.pa0) * b.ld;
        for (std::int64_t j = 0; j < planes; ++j) folded[j] = ca * counts[j];
      }
      for (std::int64_t pa = pa_begin + 1; pa < pa_end; ++pa) {
        const std::uint32_t ca = static_cast<std::uint32_t>(p.a_coef[pa]);
        const std::uint32_t* __restrict counts = b.counts + (pa - b.pa0) * b.ld;
        for (std::int64_t j = 0; j < planes; ++j) folded[j] += ca * counts[j];
      }
      switch (b.uniform_bits) {
        case 0: break;
        case 1: combine_uniform<1>(acc, folded, coef, rows); break;
        case 2: combine_uniform<2>(acc, folded, coef, rows); break;
        case 3: combine_uniform<3>(acc, folded, coef, rows); break;
        case 4: combine_uniform<4>(acc, folded, coef, rows); break;
        case 5: combine_uniform<5>(acc, folded, coef, rows); break;
        case 6: combine_uniform<6>(acc, folded, coef, rows); break;
        case 7: combine_uniform<7>(acc, folded, coef, rows); break;
        case 8: combine_uniform<8>(acc, folded, coef, rows); break;
        default:  // mixed widths: each row's own planes
          for (std::int64_t m = b.m0; m < b.m1; ++m) {
            std::uint32_t s = 0;
            for (std::int64_t pw = p.w.plane_offsets[m]; pw < p.w.plane_offsets[m + 1]; ++pw)
              s += static_cast<std::uint32_t>(p.w_coef[pw]) * folded[pw - b.pw0];
            acc[m - b.m0] += s;
          }
      }
    }
    p.store_row(n, b.m0, b.m1, acc);
  }
}

template <class Kernel>
void rect(const GemmProblem& p, std::int64_t n0, std::int64_t n1, std::int64_t m0,
          std::int64_t m1) {
  if (n0 >= n1 || m0 >= m1) return;
  const std::int64_t words = p.a.words;
  const std::int64_t kc = min64(words, kKBlockWords);
  const std::int64_t block_planes =
      max64(32, kWeightBlockBytes / (kc * static_cast<std::int64_t>(sizeof(word_t))));
  int a_bits = 1;  // the widest activation row
  for (std::int64_t n = n0; n < n1; ++n) a_bits = a_bits < p.a.bits(n) ? p.a.bits(n) : a_bits;
  // Scratch: the largest count block (at least one activation row against a weight row block
  // of at most max(block_planes, 8) planes) and one row of accumulators.
  const std::int64_t max_ld = max64(block_planes, kMaxPlanes) + kCountPad;
  const std::int64_t count_entries = max64(kCountBlockEntries, a_bits * max_ld);
  Buffer scratch(count_entries + (m1 - m0) + max_ld);
  for (std::int64_t mb = m0; mb < m1;) {
    // The weight row block: at least one row, then rows while the planes fit the budget.
    std::int64_t me = mb + 1;
    while (me < m1 && p.w.plane_offsets[me + 1] - p.w.plane_offsets[mb] <= block_planes) ++me;
    Block b;
    b.m0 = mb;
    b.m1 = me;
    b.pw0 = p.w.plane_offsets[mb];
    b.pw1 = p.w.plane_offsets[me];
    b.ld = b.pw1 - b.pw0 + kCountPad;
    b.counts = scratch.data;
    b.uniform_bits = p.w.bits(mb);
    for (std::int64_t m = mb + 1; m < me && b.uniform_bits >= 0; ++m)
      if (p.w.bits(m) != b.uniform_bits) b.uniform_bits = -1;
    // Activation rows per block: counts within the budget, and a multiple of 4 rows when
    // possible, so that rows of equal width fill whole 4-plane tiles.
    std::int64_t rows_per_block = max64(1, count_entries / (a_bits * b.ld));
    if (rows_per_block >= 4) rows_per_block &= ~std::int64_t{3};
    for (std::int64_t nb = n0; nb < n1; nb += rows_per_block) {
      b.n0 = nb;
      b.n1 = min64(n1, nb + rows_per_block);
      b.pa0 = p.a.plane_offsets[b.n0];
      b.pa1 = p.a.plane_offsets[b.n1];
      if (b.pa1 > b.pa0 && b.pw1 > b.pw0) {
        for (b.k0 = 0; b.k0 < words; b.k0 += kc) {
          b.k1 = min64(words, b.k0 + kc);
          if (p.use_xor)
            run_tiles<Kernel, true>(p, b);
          else
            run_tiles<Kernel, false>(p, b);
        }
      }
      combine(p, b, scratch.data + count_entries, scratch.data + count_entries + (m1 - m0));
    }
    mb = me;
  }
}

}  // namespace tiled
}  // namespace
}  // namespace bayesq

#endif  // BAYESQ_BITSERIAL_GEMM_TILED_H_
