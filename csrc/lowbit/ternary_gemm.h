// Dense GEMM of ternary weights x 8-bit activations on 8-bit dot-product instructions (VNNI, and
// AMX-INT8 tiles for batches of kTernaryAmxMinRows rows and more; on CPUs without VNNI, AVX2's
// vpmaddubsw with int16 accumulation, ternary_gemm_body_int16.h):
//   y[m, n] = sum_{k < K} x[m, k] w[n, k],   w in {-1, 0, +1},   x u8 (unsigned) or s8 (signed),
// exact in int32. The weights are stored at 2 bits (bitnet.cpp's I2_S idea) and expanded to
// bytes in registers; `vpdpbusd` multiplies unsigned bytes by signed bytes, four at a time, into
// int32 lanes.
//
// The arithmetic. Each weight is stored as the code c = w + 1 in {0, 1, 2}, and the activations
// enter as unsigned bytes u (u = x in unsigned mode, u = x + 128 in signed mode). Then
//   x . w = u . c - sum_{k<K} u_k - 128 [signed] sum_k w_k,
// so the kernels only ever compute u . c (u8 x s8 with non-negative s8, no saturation: vpdpbusd
// adds four products of at most 255 * 2 to each lane); the two corrections are per activation
// row (its sum of u) and per weight row (128 times its row sum, 0 in unsigned mode). Everything
// is done in 32-bit wrap-around (unsigned) arithmetic, so the result is exact whenever the true
// x . w fits in int32; kTernaryMaxK guarantees that it always does (255 * K < 2^31).
//
// Packed weight layout (TernaryWeightsView). K is padded to kp, a multiple of kTernaryBlock =
// 256 weights, so a row holds kp / 4 bytes in kp / 256 blocks of 64 bytes. Block b of a row holds
// weights b * 256 + [0, 256): byte j (0 <= j < 64) holds the code of weight b * 256 + 64 q + j in
// its bits 2q, 2q + 1 (q = 0..3). So ((byte >> 2q) & 3) over the 64 bytes of a block is the
// q-th run of 64 consecutive codes: one shift and one mask per 64 weights, whatever the vector
// width (a 32-byte half of a block gives the codes of 32 consecutive weights per q).
// The rows are stored in groups of kTernaryRowGroup = 8, block-interleaved: block b of row n is
// at byte
//   (n / 8) * 8 * (kp / 4) + b * 512 + (n % 8) * 64,
// so the blocks that a register tile of up to 8 rows reads together are adjacent, and a thread's
// share of rows is one sequential stream (what the hardware prefetcher follows best: at batch 1
// the product is bound by reading the weights). N is padded to whole groups with rows of code 0.
// Padding codes (positions K .. kp - 1, and the padding rows) are 0, so they add nothing to
// u . c whatever the activation bytes hold; the kernels read only whole blocks of rows < N.
#ifndef BAYESQ_TERNARY_GEMM_H_
#define BAYESQ_TERNARY_GEMM_H_

#include <cstdint>

namespace bayesq {

constexpr std::int64_t kTernaryBlock = 256;            // weights per 64-byte block
constexpr std::int64_t kTernaryMaxK = std::int64_t(1) << 23;  // 255 * K < 2^31
constexpr std::int64_t kTernaryRowGroup = 8;           // rows interleaved block by block

// kp: K rounded up to whole blocks (at least one block, so that K = 0 is never asked for).
inline std::int64_t ternary_padded_k(std::int64_t k) {
  return ((k + kTernaryBlock - 1) / kTernaryBlock) * kTernaryBlock;
}

// Bytes of a packed matrix of `rows` rows: whole groups of kTernaryRowGroup rows.
inline std::int64_t ternary_packed_bytes(std::int64_t rows, std::int64_t k) {
  const std::int64_t groups = (rows + kTernaryRowGroup - 1) / kTernaryRowGroup;
  return groups * kTernaryRowGroup * (ternary_padded_k(k) / 4);
}

struct TernaryWeightsView {
  std::int64_t rows = 0;  // N
  std::int64_t k = 0;     // K, 1 <= K <= kTernaryMaxK
  const std::uint8_t* codes = nullptr;   // ternary_packed_bytes(rows, k) bytes (layout above)
  const std::int32_t* row_sums = nullptr;  // rows entries: sum_k w[n, k]

  // Block 0 of row n; block b is 8 * 64 bytes further per block.
  const std::uint8_t* row(std::int64_t n) const {
    return codes + (n / kTernaryRowGroup) * kTernaryRowGroup * (ternary_padded_k(k) / 4) +
           (n % kTernaryRowGroup) * 64;
  }
};
constexpr std::int64_t kTernaryBlockStride = kTernaryRowGroup * 64;  // bytes from block b to b + 1

// The instruction-set variant of the ternary GEMM: its own names ("portable", "avx2":
// vpmaddubsw into int16, widened every 32 vectors, for AVX2 CPUs without VNNI such as Zen 3,
// "avxvnni", "avx512vnni", "avx512vnni_gfni": the same with the codes expanded by GFNI's
// vgf2p8affineqb, one instruction instead of a shift and a mask, and "amx": AMX-INT8 tiles,
// ternary_gemm_amx.cpp). A name the CPU lacks, or an unknown one, throws std::invalid_argument.
// nullptr is the best path the CPU has for large batches (the last of the available names in
// the order above: every VNNI path beats "avx2", which issues one multiply per 32 products
// where vpdpbusd issues one per 128); ternary_gemm with isa = nullptr takes
// ternary_best_isa(m) instead.
enum class TernaryIsa { kPortable, kAvx2, kAvxVnni, kAvx512Vnni, kAvx512VnniGfni, kAmx };
TernaryIsa resolve_ternary_isa(const char* name);
const char* ternary_isa_name(TernaryIsa isa);

// The AMX path wins from this many activation rows on. Measured (one thread, best of several
// runs, GOP/s of avx512vnni_gfni / amx) at N = K = 4096: m = 4: 455 / 400, m = 5: 400 / 495,
// m = 8: 500 / 760, m = 16: 445 / 1230; at N = K = 1024: m = 4: 325 / 345, m = 5: 305 / 420;
// with 2 threads (wall clock on a shared machine) m = 4 was even, m = 6: 1.3x. Below it the
// VNNI kernel's 4-row register tiles are full while the 16-row tiles are mostly empty, and
// expanding the weights to bytes costs as much as the products; at batch 1 the VNNI path, which
// reads the 2-bit weights once, is 2-4x faster.
constexpr std::int64_t kTernaryAmxMinRows = 5;

// The path isa = nullptr takes for m activation rows: AMX (if the CPU and the OS allow it) when
// m >= kTernaryAmxMinRows, else the best VNNI path, else "avx2" (whatever m: on Zen 3 it ran
// 4x torch's int8 dynamic Linear at batch 1 and 1.4x at batches 64 and 1024, N = K = 4096),
// else "portable".
TernaryIsa ternary_best_isa(std::int64_t m);

// Packs codes (rows x k, row-major, values in {-1, 0, 1}) into out_codes
// (ternary_packed_bytes(rows, k) bytes, every byte written, padding included) and row_sums. Throws std::invalid_argument on a code
// outside {-1, 0, 1} or k outside 1..kTernaryMaxK.
void pack_ternary(const std::int8_t* codes, std::int64_t rows, std::int64_t k,
                  std::uint8_t* out_codes, std::int32_t* row_sums);

// out (m x w.rows, row-major) = x w^T for x (m x w.k, row-major; u8 if !is_signed, else s8).
// x is read only within its m x k bytes. isa: nullptr (ternary_best_isa(m)) or a name (see
// resolve_ternary_isa). num_threads: at most this many threads of the pool
// (common/thread_pool.h) share the work.
void ternary_gemm(const std::uint8_t* x, std::int64_t m, bool is_signed,
                  const TernaryWeightsView& w, std::int32_t* out, const char* isa = nullptr,
                  int num_threads = 1);

// What the kernels of one ISA see (the AMX path reads the activations in its own layout and with
// its own offsets, see ternary_prepare_amx below): activations already offset to u8 and padded
// to kp bytes per row (padding bytes are 0; rows act_stride = kp + 64 bytes apart, so that the
// rows of a tile, read together, do not all fall into the same L1 sets as rows 4 KB apart
// would), and the per-row corrections.
struct TernaryProblem {
  const std::uint8_t* act = nullptr;      // m rows of kp bytes, u = x or x + 128 (signed)
  std::int64_t act_stride = 0;            // bytes from one activation row to the next
  const std::int8_t* x_signed = nullptr;  // the caller's s8 x (m x k), for the reference only
  const std::uint8_t* x_unsigned = nullptr;  // the caller's u8 x (m x k), for the reference only
  std::int64_t m = 0, kp = 0;
  const std::uint32_t* act_sums = nullptr;  // m entries: sum_{k<K} u
  const std::uint32_t* w_corr = nullptr;    // n entries: 128 sum_k w in signed mode, else 0
  TernaryWeightsView w;
  std::int32_t* out = nullptr;  // m x w.rows
};

// Computes out[m0 .. m1) x [n0 .. n1). The portable one is the reference: it decodes each weight
// and multiplies the caller's x directly (none of the u . c algebra above).
#define BAYESQ_DECLARE_TERNARY_VARIANT(isa)                                              \
  void ternary_rect_##isa(const TernaryProblem& p, std::int64_t m0, std::int64_t m1,   \
                          std::int64_t n0, std::int64_t n1);
BAYESQ_DECLARE_TERNARY_VARIANT(portable)
BAYESQ_DECLARE_TERNARY_VARIANT(avx2)
BAYESQ_DECLARE_TERNARY_VARIANT(avxvnni)
BAYESQ_DECLARE_TERNARY_VARIANT(avx512vnni)
BAYESQ_DECLARE_TERNARY_VARIANT(avx512vnni_gfni)
BAYESQ_DECLARE_TERNARY_VARIANT(amx)
#undef BAYESQ_DECLARE_TERNARY_VARIANT

// The activations as the AMX kernel reads them (the B operand of tdpbusd, s8): s = x (signed)
// or x - 128 (unsigned, x XOR 0x80), zero past k, in tiles of 16 rows: tile t (rows 16 t ..
// 16 t + 15, rows past m all zero) holds kp / 4 rows of 64 bytes, row r the bytes s[16 t + j,
// 4 r .. 4 r + 3] at 4 j (j = 0..15): tile t starts at act + 16 t kp, and the 16 x 64 B tile of
// K step u (K 64 u .. 64 u + 63) is the 1 KB at act + 16 t kp + 1024 u. act_sums[i] = sum_k s
// (mod 2^32) for the rows of the tiles. The kernel then takes w_corr = -128 sum_k w in unsigned
// mode, 0 in signed (ternary_gemm_amx.cpp). Fills tiles [tile0, tile1) only (threads share them).
void ternary_prepare_amx(const std::uint8_t* x, std::int64_t m, std::int64_t k, bool is_signed,
                         std::uint8_t* act, std::uint32_t* act_sums, std::int64_t tile0,
                         std::int64_t tile1);

}  // namespace bayesq

#endif  // BAYESQ_TERNARY_GEMM_H_
