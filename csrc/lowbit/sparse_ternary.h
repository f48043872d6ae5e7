// Sparse GEMM of ternary weights x 8-bit activations, by additions only:
//   y[m, n] = sum_{k in P(n)} x[m, k] - sum_{k in Q(n)} x[m, k],
// P(n) / Q(n) the positions of the +1s / -1s of weight row n, x u8 (unsigned) or s8 (signed),
// exact in int32 (|y| <= 255 K < 2^31 for K <= kSparseMaxK). The sibling of the dense 2-bit
// VNNI kernel (ternary_gemm.h) for the weights VNQ leaves: 70-99 % of them zero, so only the
// kept ones are stored and visited.
//
// Storage (SparseTernaryView). K is cut into blocks of kSparseBlock = 255 positions, so a kept
// position is one byte, its offset within its block, and the byte 255 is left free for a
// sentinel that adds nothing (the kernels give it activation 0). N is cut into groups of
// kSparseRowGroup = 64 rows (the last padded with empty rows). For each (row, block) the +1s and
// the -1s are stored as L = max(#+1s, #-1s) pairs (+1 offset, -1 offset), the shorter list
// padded with sentinels, so that one loop of L steps, each adding one activation and
// subtracting another, does the (row, block): one loop exit (one mispredicted branch) per
// (row, block) instead of two. Group g is one byte stream, offsets[starts[g] .. starts[g + 1]),
// ordered
//   for each block b: for each row r of the group: its L pairs (2 L bytes, +1 offset first),
// with counts[(g * blocks + b) * 64 + r] = L (uint8; at most 255). So a kernel walks a group's
// stream front to back, block by block: what the panel kernel (one block of activations in L1,
// every row of the group against it) reads, and the order the hardware prefetcher serves best.
// After the last group the stream has kSparsePad zero bytes, so that a kernel may load a whole
// vector of offsets from any position of the stream without reading past its end. row_sums[n]
// = sum_k w[n, k] (for the correction of the signed gather form).
//
// Kernels. Panel form (m >= sparse_panel_min_m(w)): the activations are transposed and widened,
// a tile of MT rows at a time (MT = 64 on AVX-512, 32 on AVX2), into an int16 panel (256 rows
// per block: its 255 positions and a zero row for the sentinel; row j holds position j's MT
// activations contiguously); each pair then adds one contiguous run of MT int16 into the plus
// accumulators and another into the minus ones, held in registers and flushed (their
// difference widened and added into an int32 tile) after each (row, block), or every
// kSparseFlush pairs: |plus - minus| <= 255 * 128 < 2^15, and the int16 sums themselves may
// wrap (only their difference, exact mod 2^16, is used). Gather form (small m, or a K too
// wide for a panel tile): AVX-512 VBMI looks the pairs' activations up with two vpermi2b in
// the block's 256 bytes (held in 4 registers; byte 255 is 0), four activation rows per pass
// over the stream, and takes plus - minus with vpmaddubsw on u = x (x + 128 in signed mode,
// then corrected by 128 row_sums): per (row, block), or, when most weights are zero, by running
// sums over each block's whole stream (sparse_running_form). AVX2 gathers them as int32.
#ifndef BAYESQ_SPARSE_TERNARY_H_
#define BAYESQ_SPARSE_TERNARY_H_

#include <cstdint>

namespace bayesq {

constexpr std::int64_t kSparseBlock = 255;      // positions per block: a kept one is a byte
constexpr std::int64_t kSparseBlockRows = 256;  // panel rows (table bytes) per block
constexpr int kSparseSentinel = 255;            // the offset that stands for "no weight"
constexpr std::int64_t kSparseRowGroup = 64;   // rows per group (one stream)
constexpr std::int64_t kSparsePad = 64;        // zero bytes after the last group's stream
constexpr std::int64_t kSparseMaxK = std::int64_t(1) << 23;  // 255 * K < 2^31
constexpr std::int64_t kSparseFlush = 128;     // pairs at most between flushes

inline std::int64_t sparse_blocks(std::int64_t k) { return (k + kSparseBlock - 1) / kSparseBlock; }
inline std::int64_t sparse_groups(std::int64_t rows) {
  return (rows + kSparseRowGroup - 1) / kSparseRowGroup;
}
// Entries of counts: one per (group, block, row of the group).
inline std::int64_t sparse_counts_size(std::int64_t rows, std::int64_t k) {
  return sparse_groups(rows) * sparse_blocks(k) * kSparseRowGroup;
}
// Panel rows (and table bytes) of a whole K: 256 per block.
inline std::int64_t sparse_padded_k(std::int64_t k) { return sparse_blocks(k) * kSparseBlockRows; }

struct SparseTernaryView {
  std::int64_t rows = 0;  // N
  std::int64_t k = 0;     // K, 1 <= K <= kSparseMaxK
  const std::uint8_t* offsets = nullptr;      // starts[groups] + kSparsePad bytes
  const std::uint8_t* counts = nullptr;       // sparse_counts_size(rows, k) entries
  const std::int64_t* starts = nullptr;       // groups + 1 entries, starts[0] = 0, ascending
  const std::int32_t* row_sums = nullptr;     // rows entries
};

// "portable" (the reference), "avx2", "avx512" (AVX-512 F/BW/VL + VBMI); nullptr: the best the
// CPU has. A name the CPU lacks, or an unknown one, throws std::invalid_argument.
enum class SparseIsa { kPortable, kAvx2, kAvx512 };
SparseIsa resolve_sparse_isa(const char* name);
const char* sparse_isa_name(SparseIsa isa);

// Checks codes (rows x k, row-major) and returns the stream's length without its pad (2 L bytes
// per (row, block)). Throws std::invalid_argument on a code outside {-1, 0, 1} or k outside
// 1..kSparseMaxK.
std::int64_t sparse_ternary_stream_bytes(const std::int8_t* codes, std::int64_t rows,
                                         std::int64_t k);

// Packs codes into offsets (sparse_ternary_stream_bytes + kSparsePad bytes, pad included),
// counts (sparse_counts_size entries), starts (sparse_groups(rows) + 1 entries) and row_sums
// (rows entries).
void pack_sparse_ternary(const std::int8_t* codes, std::int64_t rows, std::int64_t k,
                         std::uint8_t* offsets, std::uint8_t* counts, std::int64_t* starts,
                         std::int32_t* row_sums);

// out (m x w.rows, row-major) = x w^T for x (m x w.k, row-major; u8 if !is_signed, else s8).
// Counts that do not fit their group's stream (a hand-made view) throw std::invalid_argument
// before anything is read past the stream. num_threads: at most this many threads of the pool.
void sparse_ternary_gemm(const std::uint8_t* x, std::int64_t m, bool is_signed,
                         const SparseTernaryView& w, std::int32_t* out, const char* isa = nullptr,
                         int num_threads = 1);

// What the kernels of one ISA see. panel: nullptr (gather form) or tiles of
// sparse_padded_k(k) x tile int16, tile t holding activation rows t * tile .. t * tile + tile - 1
// (zeros past m, past K and in each block's sentinel row).
struct SparseProblem {
  const std::uint8_t* x = nullptr;  // the caller's x, m x k
  bool is_signed = false;
  std::int64_t m = 0;
  SparseTernaryView w;
  std::int32_t* out = nullptr;      // m x w.rows
  std::int16_t* panel = nullptr;
  std::int64_t tile = 0;            // activation rows per panel tile (the kernel's MT)
};

// The batch from which the panel form runs (below it the gather form, the rows four at a
// time): the panel costs about the same from 1 to 32 rows (its tile), the gather form grows
// with the rows. Measured at N = K = 4096, one thread, AVX-512 (ms, gather vs panel): 80 %
// zeros m = 8: 1.24 vs 1.74, m = 12: 1.88 vs 1.74; 50 %: m = 8: 2.67 vs 3.30, m = 16: 5.29 vs
// 3.32; 95 %: m = 8: 1.01 vs 0.80. So from 11 rows on, or 6 when the (row, block)s hold fewer
// than 16 pairs on average (at 95 % zeros, 8).
std::int64_t sparse_panel_min_m(const SparseTernaryView& w);

// Whether the AVX-512 gather form runs by running sums over each block's whole stream (a fixed
// cost per 32 pairs and two loads per (row, block)) rather than a lookup step per (row, block):
// when the (row, block)s hold at most 8 pairs on average (about 95 % zeros and more). Measured
// at N = K = 4096, batch 1, one thread: 99 % zeros 0.106 ms against 0.166; 95 %: 0.162 against
// 0.166; 80 %: 0.420 against 0.263.
bool sparse_running_form(const SparseTernaryView& w);

// Per ISA: sparse_tile_rows_<isa>(m) is its MT for a batch of m (one register: 32 / 16 rows,
// if m fits in it, else two); sparse_panel_<isa> builds the panel's blocks
// [u0, u1), counted tile-major (u = tile * blocks + block); sparse_rect_<isa> computes out for activation rows [m0, m1) (whole tiles in the
// panel form) and row groups [g0, g1). The portable rect is the reference: it walks the stream
// and adds the caller's x directly (no panel, no lookups).
#define BAYESQ_DECLARE_SPARSE_VARIANT(isa)                                                   \
  std::int64_t sparse_tile_rows_##isa(std::int64_t m);                                     \
  void sparse_panel_##isa(const SparseProblem& p, std::int64_t u0, std::int64_t u1);       \
  void sparse_rect_##isa(const SparseProblem& p, std::int64_t m0, std::int64_t m1,         \
                         std::int64_t g0, std::int64_t g1);
BAYESQ_DECLARE_SPARSE_VARIANT(avx2)
BAYESQ_DECLARE_SPARSE_VARIANT(avx512)
#undef BAYESQ_DECLARE_SPARSE_VARIANT
void sparse_rect_portable(const SparseProblem& p, std::int64_t m0, std::int64_t m1,
                          std::int64_t g0, std::int64_t g1);

// The per-(row, block) check every kernel makes before reading its pairs: they must fit the
// rest of the group's stream.
void sparse_corrupt_counts();  // throws std::invalid_argument
inline void sparse_check_pairs(std::int64_t pairs, const std::uint8_t* s, const std::uint8_t* end) {
  if (2 * pairs > end - s) sparse_corrupt_counts();
}

}  // namespace bayesq

#endif  // BAYESQ_SPARSE_TERNARY_H_
