// The ternary x 8-bit GEMM on AMX-INT8 (Sapphire Rapids and later): tdpbusd multiplies a
// 16 x 64 u8 tile by a 16 x 64 s8 tile (16 x 16 x 64 multiply-adds) into a 16 x 16 int32 tile.
// Compiled with -mamx-tile -mamx-int8 -mavx512f -mavx512bw -mavx512vl; called only after
// resolve_ternary_isa found AMX-TILE, AMX-INT8, AVX-512 F/BW/VL, the tile state enabled in XCR0
// and (Linux) the process's permission to use it (ternary_gemm.cpp).
//
// Roles (the transpose of the VNNI kernels'). tdpbusd takes its unsigned operand as the "A" tile
// (16 rows x 64 consecutive K bytes, any row stride) and its signed operand as the "B" tile in the
// VNNI-interleaved layout (row r holds, for each of 16 output columns, 4 consecutive K bytes
// 4r .. 4r + 3). The weights go into A, as the codes c = w + 1 in {0, 1, 2}: then expanding them
// is the VNNI kernels' own shift and mask ((byte >> 2q) & 3 over a 64-byte block is 64
// consecutive codes, one A-tile row), with no transpose. The activations go into B as
// s = x (signed mode) or x - 128 (unsigned mode), s8: they are rearranged once per call
// (ternary_prepare_amx, O(m k)) and reused by every weight panel. So a C tile holds c . s for 16
// weight rows x 16 activation rows, and
//   x . w = c . s - sum_k s_k + 128 [unsigned] sum_k w_k
// (c . s = w . s + sum s; in unsigned mode w . s = x . w - 128 sum w): the VNNI paths' formula
// out = dot - act_sums[m] - w_corr[n] with act_sums = sum s, w_corr = -128 sum w [unsigned]
// (mod 2^32; tdpbusd adds without saturation, so everything is exact as in ternary_gemm.h).
//
// Blocking. Tiles: 4 accumulators (2 weight sub-tiles x 2 activation sub-tiles), 2 A, 2 B: all 8
// tile registers, 4 tile loads per 4 tdpbusd. Each 16 x 64 A tile of expanded codes is stored as
// 1 KB contiguous (a tile load is one sequential 1 KB read). The tile loads, not the tdpbusd,
// bound the loop, so what counts is where they read from. Two schemes (chosen by the number of
// activation rows a thread has; measured single-threaded at N = K = 4096, GOP/s):
//  * rect_l1 (fewer than kPanelMinRows rows): a pair of weight sub-tiles (32 rows) over a K chunk
//    of kL1Blocks blocks (512 weights: 16 KB) is expanded just before use and stays in L1 while
//    every activation tile pair of a super-block (kL2ActBytes of activations, in L2) passes over
//    it; the accumulators wait in a per-thread buffer between K chunks. Batch 16: 1300, 64: 2150
//    (against 680 and 1550 with the panel scheme, whose expanded panel goes out to L2 and back).
//  * rect_panel (from kPanelMinRows rows on): a panel of kPanelRows weight rows over a K chunk of
//    kChunkBlocks blocks (1 MB at 256 x 4096, in L2) is expanded once, then every activation
//    tile pair sweeps all its row pairs (no accumulator traffic at K <= 4096; the expansion is
//    amortized over the many rows). Batch 1024: about 2050 (1800 with rect_l1, which re-expands
//    the weights for each super-block and moves its accumulators once per 512 weights).
// (Expanding the next panel in the shadow of the current one's tdpbusd, double-buffered, was
// tried: no gain; the expansion's stores and the tile loads share the same L2 bandwidth.)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "lowbit/ternary_gemm.h"

namespace {

using bayesq::TernaryProblem;

constexpr std::int64_t kTile = 16;           // rows of every tile; int32 columns of a C tile
constexpr std::int64_t kTileBytes = 1024;    // 16 rows x 64 bytes
constexpr std::int64_t kStepK = 64;          // K per tdpbusd
// rect_l1
constexpr std::int64_t kL1Blocks = 2;                         // K chunk: 512 weights
constexpr std::int64_t kL2ActBytes = std::int64_t(1) << 19;  // activations of one super-block
// rect_panel
constexpr std::int64_t kPanelMinRows = 512;  // activation rows from which it is taken
constexpr std::int64_t kPanelRows = 256;     // weight rows expanded at once (a multiple of 32)
constexpr std::int64_t kChunkBlocks = 16;    // blocks of 256 weights per K chunk (4096 weights)

// The 64-byte operand of ldtilecfg (palette 1): every tile 16 rows x 64 bytes.
struct alignas(64) TileConfig {
  std::uint8_t palette_id = 1;
  std::uint8_t start_row = 0;
  std::uint8_t reserved[14] = {};
  std::uint16_t colsb[16] = {};
  std::uint8_t rows[16] = {};
};

TileConfig full_tiles() {
  TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.colsb[t] = 64;
    c.rows[t] = kTile;
  }
  return c;
}

// Per-thread buffers, kept across calls (pool workers live for the process), in 64-byte lines.
struct alignas(64) Line {
  std::uint8_t bytes[64];
};
struct Buffers {
  std::vector<Line> panel, acc;
  std::int32_t scratch[kTile * kTile] __attribute__((aligned(64)));
};
thread_local Buffers tls;

std::uint8_t* grow(std::vector<Line>& v, std::int64_t bytes) {
  const std::size_t lines = static_cast<std::size_t>((bytes + 63) / 64);
  if (v.size() < lines) v.resize(lines);
  return v.data()->bytes;
}

// Weight rows [n, n + rows) (rows_padded - rows zero rows after them), blocks [b0, b1), expanded
// to codes: sub-tile i (rows 16 i ..), step t (K 64 t ..) at buf + (i * steps + t) KB.
void expand_panel(const TernaryProblem& p, std::int64_t n, std::int64_t rows,
                  std::int64_t rows_padded, std::int64_t b0, std::int64_t b1, std::uint8_t* buf) {
  const std::int64_t steps = 4 * (b1 - b0);
  const __m512i three = _mm512_set1_epi8(3);
  for (std::int64_t r = 0; r < rows_padded; ++r) {
    std::uint8_t* dst = buf + (r / kTile) * steps * kTileBytes + (r % kTile) * 64;
    if (r >= rows) {
      for (std::int64_t t = 0; t < steps; ++t)
        _mm512_store_si512(dst + t * kTileBytes, _mm512_setzero_si512());
      continue;
    }
    const std::uint8_t* src = p.w.row(n + r);
    for (std::int64_t b = b0; b < b1; ++b) {
      const __m512i v = _mm512_loadu_si512(src + b * bayesq::kTernaryBlockStride);
      std::uint8_t* d = dst + (b - b0) * 4 * kTileBytes;
      _mm512_store_si512(d, _mm512_and_si512(v, three));
      _mm512_store_si512(d + kTileBytes, _mm512_and_si512(_mm512_srli_epi16(v, 2), three));
      _mm512_store_si512(d + 2 * kTileBytes, _mm512_and_si512(_mm512_srli_epi16(v, 4), three));
      _mm512_store_si512(d + 3 * kTileBytes, _mm512_and_si512(_mm512_srli_epi16(v, 6), three));
    }
  }
}

// out[m, n] for the C tile in `scratch` (rows: weight rows n .. n + 16, columns: activation rows
// m .. m + 16), the part below n_end, m_end.
void write_tile(const TernaryProblem& p, const std::int32_t* scratch, std::int64_t n,
                std::int64_t m, std::int64_t n_end, std::int64_t m_end, std::int64_t m_begin) {
  const std::int64_t rows = p.w.rows;
  for (std::int64_t j = 0; j < kTile && m + j < m_end; ++j) {
    if (m + j < m_begin) continue;
    const std::uint32_t a = p.act_sums[m + j];
    std::int32_t* o = p.out + (m + j) * rows;
    for (std::int64_t i = 0; i < kTile && n + i < n_end; ++i) {
      const std::uint32_t s =
          static_cast<std::uint32_t>(scratch[i * kTile + j]) - a - p.w_corr[n + i];
      o[n + i] = static_cast<std::int32_t>(s);
    }
  }
}

// ASan does not instrument tile loads and stores: under it, each tile's 16 rows are touched at
// their first and last bytes with ordinary (checked) reads before the tile instruction.
#if defined(__SANITIZE_ADDRESS__)
inline void asan_check_tile(const void* base, std::int64_t stride) {
  const volatile std::uint8_t* p = static_cast<const volatile std::uint8_t*>(base);
  for (std::int64_t r = 0; r < kTile; ++r) {
    (void)p[r * stride];
    (void)p[r * stride + 63];
  }
}
#define BAYESQ_TILE_LOAD(t, base, stride) \
  do {                                    \
    asan_check_tile((base), (stride));    \
    _tile_loadd(t, (base), (stride));     \
  } while (0)
#define BAYESQ_TILE_STORE(t, base, stride) \
  do {                                     \
    asan_check_tile((base), (stride));     \
    _tile_stored(t, (base), (stride));     \
  } while (0)
#else
#define BAYESQ_TILE_LOAD(t, base, stride) _tile_loadd(t, (base), (stride))
#define BAYESQ_TILE_STORE(t, base, stride) _tile_stored(t, (base), (stride))
#endif

// The tile numbers: C(i, j) = 2 i + j (weight sub-tile i, activation sub-tile j), A(i) = 4 + i,
// B(j) = 6 + j. NI, MJ (1 or 2): the sub-tiles present at a panel's or the batch's edge.
template <int NI, int MJ>
inline __attribute__((always_inline)) void dot_steps(const std::uint8_t* a, std::int64_t a_next,
                                                     const std::uint8_t* b, std::int64_t b_next,
                                                     std::int64_t steps) {
  for (std::int64_t t = 0; t < steps; ++t) {
    BAYESQ_TILE_LOAD(4, a + t * kTileBytes, 64);
    if (NI == 2) BAYESQ_TILE_LOAD(5, a + a_next + t * kTileBytes, 64);
    BAYESQ_TILE_LOAD(6, b + t * kTileBytes, 64);
    if (MJ == 2) BAYESQ_TILE_LOAD(7, b + b_next + t * kTileBytes, 64);
    _tile_dpbusd(0, 4, 6);
    if (MJ == 2) _tile_dpbusd(1, 4, 7);
    if (NI == 2) _tile_dpbusd(2, 5, 6);
    if (NI == 2 && MJ == 2) _tile_dpbusd(3, 5, 7);
  }
}

// One 32 x 32 block (or its NI x MJ part) over one K chunk. acc: the block's 4 KB of waiting
// accumulators (read unless first, written unless last); on the last chunk the outputs are
// written with their corrections.
template <int NI, int MJ>
void block(const TernaryProblem& p, const std::uint8_t* a, std::int64_t a_next,
           const std::uint8_t* b, std::int64_t b_next, std::int64_t steps, bool first, bool last,
           std::int32_t* acc, std::int64_t n, std::int64_t m, std::int64_t n_end,
           std::int64_t m_begin, std::int64_t m_end) {
  if (first) {
    _tile_zero(0);
    if (MJ == 2) _tile_zero(1);
    if (NI == 2) _tile_zero(2);
    if (NI == 2 && MJ == 2) _tile_zero(3);
  } else {
    BAYESQ_TILE_LOAD(0, acc, 64);
    if (MJ == 2) BAYESQ_TILE_LOAD(1, acc + 256, 64);
    if (NI == 2) BAYESQ_TILE_LOAD(2, acc + 512, 64);
    if (NI == 2 && MJ == 2) BAYESQ_TILE_LOAD(3, acc + 768, 64);
  }
  dot_steps<NI, MJ>(a, a_next, b, b_next, steps);
  if (!last) {
    BAYESQ_TILE_STORE(0, acc, 64);
    if (MJ == 2) BAYESQ_TILE_STORE(1, acc + 256, 64);
    if (NI == 2) BAYESQ_TILE_STORE(2, acc + 512, 64);
    if (NI == 2 && MJ == 2) BAYESQ_TILE_STORE(3, acc + 768, 64);
    return;
  }
  std::int32_t* s = tls.scratch;
  BAYESQ_TILE_STORE(0, s, 64);
  write_tile(p, s, n, m, n_end, m_end, m_begin);
  if (MJ == 2) {
    BAYESQ_TILE_STORE(1, s, 64);
    write_tile(p, s, n, m + kTile, n_end, m_end, m_begin);
  }
  if (NI == 2) {
    BAYESQ_TILE_STORE(2, s, 64);
    write_tile(p, s, n + kTile, m, n_end, m_end, m_begin);
  }
  if (NI == 2 && MJ == 2) {
    BAYESQ_TILE_STORE(3, s, 64);
    write_tile(p, s, n + kTile, m + kTile, n_end, m_end, m_begin);
  }
}

// The block of the sub-tiles present: two weight sub-tiles or one, two activation tiles or one.
struct BlockArgs {
  const std::uint8_t* a;  // A tile of weight sub-tile 0 at the chunk's first step
  std::int64_t a_next;    // bytes to sub-tile 1's
  const std::uint8_t* b;  // B tile of activation tile 0 at the chunk's first step
  std::int64_t b_next;    // bytes to activation tile 1's
  std::int64_t steps;
  bool first, last;       // the chunk is K's first, last
  std::int32_t* acc;      // the waiting accumulators (4 KB), when K has several chunks
  std::int64_t n, m;      // the block's first weight row, activation row
  std::int64_t n_end, m_begin, m_end;  // the outputs this thread writes
};

void run_block(const TernaryProblem& p, const BlockArgs& g, bool two_n, bool two_m) {
  if (two_n && two_m)
    block<2, 2>(p, g.a, g.a_next, g.b, g.b_next, g.steps, g.first, g.last, g.acc, g.n, g.m,
                g.n_end, g.m_begin, g.m_end);
  else if (two_n)
    block<2, 1>(p, g.a, g.a_next, g.b, g.b_next, g.steps, g.first, g.last, g.acc, g.n, g.m,
                g.n_end, g.m_begin, g.m_end);
  else if (two_m)
    block<1, 2>(p, g.a, g.a_next, g.b, g.b_next, g.steps, g.first, g.last, g.acc, g.n, g.m,
                g.n_end, g.m_begin, g.m_end);
  else
    block<1, 1>(p, g.a, g.a_next, g.b, g.b_next, g.steps, g.first, g.last, g.acc, g.n, g.m,
                g.n_end, g.m_begin, g.m_end);
}

// 16 rows of 16 dwords, transposed in place: v[r] dword i <- v[i] dword r.
inline void transpose16(__m512i v[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  // u[4 g + c], 128-bit lane L: dword 4 L + c of rows 4 g .. 4 g + 3
  for (int g = 0; g < 4; ++g) {
    u[4 * g + 0] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
    u[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
    u[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
  }
  // row 4 L + c = lane L of u[c], u[4 + c], u[8 + c], u[12 + c]
  for (int c = 0; c < 4; ++c) {
    const __m512i x01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x88);  // lanes 0, 2
    const __m512i y01 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xdd);  // lanes 1, 3
    const __m512i x23 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x88);
    const __m512i y23 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xdd);
    v[c] = _mm512_shuffle_i32x4(x01, x23, 0x88);
    v[4 + c] = _mm512_shuffle_i32x4(y01, y23, 0x88);
    v[8 + c] = _mm512_shuffle_i32x4(x01, x23, 0xdd);
    v[12 + c] = _mm512_shuffle_i32x4(y01, y23, 0xdd);
  }
}

// Activation rows [m0, m1) x weight rows [n0, n1), the small-batch scheme (see the top).
void rect_l1(const TernaryProblem& p, std::int64_t m0, std::int64_t m1, std::int64_t n0,
             std::int64_t n1) {
  const std::int64_t blocks = p.kp / bayesq::kTernaryBlock;
  const std::int64_t act_tile_bytes = p.kp * kTile;
  const std::int64_t tile0 = m0 / kTile, tile1 = (m1 + kTile - 1) / kTile;
  const std::int64_t super_tiles =  // activation tiles per super-block: an even number, >= 2
      std::max<std::int64_t>(2, kL2ActBytes / act_tile_bytes / 2 * 2);
  const bool chunked = blocks > kL1Blocks;
  std::uint8_t* panel = grow(tls.panel, 2 * 4 * kL1Blocks * kTileBytes);
  std::int32_t* acc = chunked ? reinterpret_cast<std::int32_t*>(
                                    grow(tls.acc, super_tiles / 2 * 4 * kTileBytes))
                              : nullptr;
  for (std::int64_t st = tile0; st < tile1; st += super_tiles) {
    const std::int64_t se = std::min(tile1, st + super_tiles), pairs = (se - st + 1) / 2;
    for (std::int64_t n = n0; n < n1; n += 2 * kTile) {
      const std::int64_t rows = std::min(2 * kTile, n1 - n);
      const std::int64_t rows_padded = (rows + kTile - 1) / kTile * kTile;
      const bool two_n = rows_padded > kTile;
      for (std::int64_t b0 = 0; b0 < blocks; b0 += kL1Blocks) {
        const std::int64_t b1 = std::min(blocks, b0 + kL1Blocks), steps = 4 * (b1 - b0);
        expand_panel(p, n, rows, rows_padded, b0, b1, panel);
        __asm__ volatile("" ::: "memory");
        const bool first = b0 == 0, last = b1 == blocks;
        const std::int64_t a_next = steps * kTileBytes;
        for (std::int64_t pm = 0; pm < pairs; ++pm) {
          const std::int64_t tile = st + 2 * pm, m = tile * kTile;
          const std::uint8_t* b = p.act + tile * act_tile_bytes + 4 * b0 * kTileBytes;
          const BlockArgs g{panel, a_next, b, act_tile_bytes, steps, first, last,
                            chunked ? acc + pm * 4 * 256 : nullptr, n, m, n1, m0, m1};
          run_block(p, g, two_n, tile + 1 < se);
        }
      }
    }
  }
}

// The large-batch scheme (see the top).
void rect_panel(const TernaryProblem& p, std::int64_t m0, std::int64_t m1, std::int64_t n0,
                std::int64_t n1) {
  const std::int64_t blocks = p.kp / bayesq::kTernaryBlock;
  const std::int64_t act_tile_bytes = p.kp * kTile;  // one 16-row activation tile, all of K
  const std::int64_t tile0 = m0 / kTile, tile1 = (m1 + kTile - 1) / kTile;
  const std::int64_t pairs_m = (tile1 - tile0 + 1) / 2;
  const bool chunked = blocks > kChunkBlocks;
  for (std::int64_t pn = n0; pn < n1; pn += kPanelRows) {
    const std::int64_t rows = std::min(kPanelRows, n1 - pn);
    const std::int64_t rows_padded = (rows + kTile - 1) / kTile * kTile;
    const std::int64_t subs = rows_padded / kTile;
    std::int32_t* acc = nullptr;
    if (chunked)
      acc = reinterpret_cast<std::int32_t*>(
          grow(tls.acc, ((subs + 1) / 2) * pairs_m * 4 * kTileBytes));
    for (std::int64_t b0 = 0; b0 < blocks; b0 += kChunkBlocks) {
      const std::int64_t b1 = std::min(blocks, b0 + kChunkBlocks), steps = 4 * (b1 - b0);
      std::uint8_t* panel = grow(tls.panel, subs * steps * kTileBytes);
      expand_panel(p, pn, rows, rows_padded, b0, b1, panel);
      // GCC's tileloadd asm does not say that it reads memory: keep the panel's stores before it
      __asm__ volatile("" ::: "memory");
      const bool first = b0 == 0, last = b1 == blocks;
      for (std::int64_t pm = 0; pm < pairs_m; ++pm) {
        const std::int64_t tile = tile0 + 2 * pm;
        const std::uint8_t* b = p.act + tile * act_tile_bytes + 4 * b0 * kTileBytes;
        const bool two_m = tile + 1 < tile1;
        for (std::int64_t i = 0; i < subs; i += 2) {
          const std::uint8_t* a = panel + i * steps * kTileBytes;
          const std::int64_t a_next = steps * kTileBytes;
          std::int32_t* blk = chunked ? acc + ((i / 2) * pairs_m + pm) * 4 * 256 : nullptr;
          const BlockArgs g{a, a_next, b, act_tile_bytes, steps, first, last, blk,
                            pn + i * kTile, tile * kTile, n1, m0, m1};
          run_block(p, g, i + 1 < subs, two_m);
        }
      }
    }
  }
}

}  // namespace

namespace bayesq {

void ternary_prepare_amx(const std::uint8_t* x, std::int64_t m, std::int64_t k, bool is_signed,
                         std::uint8_t* act, std::uint32_t* act_sums, std::int64_t tile0,
                         std::int64_t tile1) {
  const std::int64_t kp = ternary_padded_k(k), steps = kp / kStepK;
  const __m512i flip = _mm512_set1_epi8(is_signed ? 0 : static_cast<char>(0x80));
  const __m512i bias = _mm512_set1_epi8(static_cast<char>(0x80));
  for (std::int64_t tile = tile0; tile < tile1; ++tile) {
    const std::int64_t m0 = tile * kTile;
    __m512i sums[kTile];
    for (auto& s : sums) s = _mm512_setzero_si512();
    std::uint8_t* dst = act + tile * kp * kTile;
    for (std::int64_t t = 0; t < steps; ++t) {
      const std::int64_t k0 = t * kStepK;
      // bytes k0 .. k0 + 63 that lie below k (masked loads: nothing past a row is touched)
      const __mmask64 valid = k0 >= k ? 0
                              : k - k0 >= 64 ? ~__mmask64(0)
                                             : (__mmask64(1) << (k - k0)) - 1;
      __m512i v[kTile];
      for (std::int64_t i = 0; i < kTile; ++i) {
        if (m0 + i < m && valid != 0) {
          const __m512i raw = _mm512_maskz_loadu_epi8(valid, x + (m0 + i) * k + k0);
          v[i] = _mm512_maskz_mov_epi8(valid, _mm512_xor_si512(raw, flip));  // s; padding 0
        } else {
          v[i] = _mm512_setzero_si512();
        }
        // sum of s + 128 over all kp bytes (padding included), taken off below
        const __m512i u = _mm512_xor_si512(v[i], bias);
        sums[i] = _mm512_add_epi64(sums[i], _mm512_sad_epu8(u, _mm512_setzero_si512()));
      }
      transpose16(v);
      for (int r = 0; r < kTile; ++r) _mm512_store_si512(dst + t * kTileBytes + r * 64, v[r]);
    }
    for (std::int64_t i = 0; i < kTile && m0 + i < m; ++i)
      act_sums[m0 + i] = static_cast<std::uint32_t>(_mm512_reduce_add_epi64(sums[i])) -
                         static_cast<std::uint32_t>(128 * kp);
  }
}

void ternary_rect_amx(const TernaryProblem& p, std::int64_t m0, std::int64_t m1, std::int64_t n0,
                      std::int64_t n1) {
  // Each thread loads its tile configuration before its first tile instruction and releases the
  // tile state after its last (so the OS need not save 8 KB of tiles at every switch after).
  static const TileConfig config = full_tiles();
  _tile_loadconfig(&config);
  if (m1 - m0 < kPanelMinRows)
    rect_l1(p, m0, m1, n0, n1);
  else
    rect_panel(p, m0, m1, n0, n1);
  _tile_release();
}

}  // namespace bayesq
