// The panel form of the sparse ternary GEMM, written once for any vector width. Included by
// sparse_ternary_avx512.cpp and sparse_ternary_avx2.cpp, each after defining, inside an
// anonymous namespace (the files are compiled with different -m flags and must not share
// symbols), a struct V with
//   reg  (kLanes int16 lanes),  load(const int16_t*),  zero(),  add(a, b),  sub(a, b),
//   flush(reg, int32_t* dst)    dst[0 .. kLanes) += the lanes, sign-extended,
//   add_pair(a0, a1, b0, b1, pp, pm)   a0 += pp[0, kLanes), a1 += pp[kLanes, 2 kLanes), b0, b1
//                               the same from pm (int16, wrapping).
//   add_pair1(a0, b0, pp, pm)  a0 += pp[0, kLanes), b0 += pm[0, kLanes).
// A panel tile holds MT = R kLanes activation rows (R = 2, or R = 1 for batches that fill no
// more than one register): position k's MT values at panel + k * MT. See sparse_ternary.h for
// the stream it walks. The including file has <algorithm> and <cstring> (not included here:
// this text sits inside a namespace).

constexpr std::int64_t kRows = bayesq::kSparseRowGroup;
constexpr std::int64_t kBlockRows = bayesq::kSparseBlockRows;

// Pairs (plus offset, minus offset) at s[0 .. 2 pairs) of one (row, block): the panel rows of
// the plus offsets summed into the int16 accumulators a, of the minus ones into b (2 R
// independent chains of vector adds); their difference, flushed into dst (int32, MT lanes), is
// the (row, block)'s share of x . w. At most kSparseFlush pairs per flush: |plus - minus| <=
// 255 * 128 < 2^15 (the int16 sums themselves may wrap).
template <int R>
inline void accumulate_pairs(const std::int16_t* blk, const std::uint8_t* s, std::int64_t pairs,
                             std::int32_t* dst) {
  constexpr int kMT = R * V::kLanes;
  // pairs >= 1: a do-while (GCC then keeps each accumulator in one register)
  const std::uint8_t* q = s;
  for (std::int64_t j = 0; j < pairs; j += bayesq::kSparseFlush) {
    const std::uint8_t* stop = q + 2 * std::min(pairs - j, bayesq::kSparseFlush);
    typename V::reg a0 = V::zero(), a1 = V::zero(), b0 = V::zero(), b1 = V::zero();
    do {
      const std::int16_t* pp = blk + static_cast<std::int64_t>(q[0]) * kMT;
      const std::int16_t* pm = blk + static_cast<std::int64_t>(q[1]) * kMT;
      if (R == 2)
        V::add_pair(a0, a1, b0, b1, pp, pm);
      else
        V::add_pair1(a0, b0, pp, pm);
      q += 2;
    } while (q != stop);
    V::flush(V::sub(a0, b0), dst);
    if (R == 2) V::flush(V::sub(a1, b1), dst + V::kLanes);
  }
}

// Row group g against panel tile `panel` (sparse_padded_k x MT): acc (kRows x MT int32, row
// r's sums for the tile's activation rows at acc + r * MT).
template <int R>
inline void panel_group(const bayesq::SparseProblem& p, const std::int16_t* panel,
                        std::int64_t g, std::int32_t* acc) {
  constexpr int kMT = R * V::kLanes;
  const std::int64_t blocks = bayesq::sparse_blocks(p.w.k);
  std::memset(acc, 0, sizeof(std::int32_t) * kRows * kMT);
  const std::uint8_t* s = p.w.offsets + p.w.starts[g];
  const std::uint8_t* end = p.w.offsets + p.w.starts[g + 1];
  const std::uint8_t* c = p.w.counts + g * blocks * kRows;
  for (std::int64_t b = 0; b < blocks; ++b, c += kRows) {
    const std::int16_t* blk = panel + b * kBlockRows * kMT;
    for (std::int64_t r = 0; r < kRows; ++r) {
      const std::int64_t pairs = c[r];
      if (pairs == 0) continue;
      bayesq::sparse_check_pairs(pairs, s, end);
      accumulate_pairs<R>(blk, s, pairs, acc + r * kMT);
      s += 2 * pairs;
    }
  }
}

// Panel blocks [u0, u1) from x, counted tile-major (u = t * blocks + b): tile t, block b, row
// j < 255, lane i = x[t * MT + i, 255 b + j] widened to int16; 0 past m, past K and in row 255
// (the sentinel's). By blocks, so that threads share the building of even a single tile.
template <int R>
inline void build_panel(const bayesq::SparseProblem& p, std::int64_t u0, std::int64_t u1) {
  constexpr int kMT = R * V::kLanes;
  const std::int64_t k = p.w.k, blocks = bayesq::sparse_blocks(k);
  for (std::int64_t u = u0; u < u1; ++u) {
    const std::int64_t t = u / blocks, b = u % blocks;
    std::int16_t* dst = p.panel + u * kBlockRows * kMT;
    const std::int64_t k0 = b * bayesq::kSparseBlock;
    const std::int64_t width = std::min(bayesq::kSparseBlock, k - k0);
    std::memset(dst + width * kMT, 0, sizeof(std::int16_t) * (kBlockRows - width) * kMT);
    for (int i = 0; i < kMT; ++i) {
      const std::int64_t m = t * kMT + i;
      if (m >= p.m) {
        for (std::int64_t j = 0; j < width; ++j) dst[j * kMT + i] = 0;
        continue;
      }
      const std::uint8_t* row = p.x + m * k + k0;
      if (p.is_signed)
        for (std::int64_t j = 0; j < width; ++j) dst[j * kMT + i] = static_cast<std::int8_t>(row[j]);
      else
        for (std::int64_t j = 0; j < width; ++j) dst[j * kMT + i] = row[j];
    }
  }
}

// Activation rows [m0, m1) (m0 a multiple of MT) x row groups [g0, g1), kTilesAtOnce tiles at
// a time: their panels (512 KB each at K = 4096 on AVX-512) stay in L2 while every group's
// stream passes over them, one block (32 KB) at a time in L1, and each group's stream (57 KB at
// K = 4096, 80 % zeros) is read once per kTilesAtOnce tiles.
constexpr std::int64_t kTilesAtOnce = 2;

template <int R>
inline void panel_rect(const bayesq::SparseProblem& p, std::int64_t m0, std::int64_t m1,
                       std::int64_t g0, std::int64_t g1) {
  constexpr int kMT = R * V::kLanes;
  const std::int64_t kp = bayesq::sparse_padded_k(p.w.k);
  const std::int64_t n_out = p.w.rows;
  alignas(64) std::int32_t acc[kRows * kMT];
  const std::int64_t t_end = (m1 + kMT - 1) / kMT;
  for (std::int64_t t0 = m0 / kMT; t0 < t_end; t0 += kTilesAtOnce)
    for (std::int64_t g = g0; g < g1; ++g)
      for (std::int64_t t = t0; t < std::min(t_end, t0 + kTilesAtOnce); ++t) {
        panel_group<R>(p, p.panel + t * kp * kMT, g, acc);
        const std::int64_t mi = std::min<std::int64_t>(kMT, m1 - t * kMT);
        const std::int64_t rows = std::min(kRows, n_out - g * kRows);
        std::int32_t* out = p.out + t * kMT * n_out + g * kRows;
        for (std::int64_t i = 0; i < mi; ++i)
          for (std::int64_t r = 0; r < rows; ++r) out[i * n_out + r] = acc[r * kMT + i];
      }
}

// The entry points of an ISA file: MT for a batch of m rows (one register's lanes when they
// hold the whole batch), and the panel form's building and rect by p.tile.
inline std::int64_t tile_rows(std::int64_t m) { return m <= V::kLanes ? V::kLanes : 2 * V::kLanes; }
inline void build_panel_any(const bayesq::SparseProblem& p, std::int64_t u0, std::int64_t u1) {
  if (p.tile == V::kLanes)
    build_panel<1>(p, u0, u1);
  else
    build_panel<2>(p, u0, u1);
}
inline void panel_rect_any(const bayesq::SparseProblem& p, std::int64_t m0, std::int64_t m1,
                           std::int64_t g0, std::int64_t g1) {
  if (p.tile == V::kLanes)
    panel_rect<1>(p, m0, m1, g0, g1);
  else
    panel_rect<2>(p, m0, m1, g0, g1);
}
