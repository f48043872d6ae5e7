// The register-tiled ternary x u8 kernel for CPUs without an 8-bit dot product into int32
// (AVX2 only: no vpdpbusd). Included by ternary_gemm_avx2.cpp inside an anonymous namespace.
//
// The product u . c (u8 activations, codes c = w + 1 in {0, 1, 2}; ternary_gemm.h) is taken
// with vpmaddubsw: each int16 lane gets the sum of two products u c <= 2 * 255 * 2 = 1020, so it
// never saturates. Those int16 sums are ACCUMULATED IN INT16 for kInt16Steps = 32 vectors
// (32 * 1020 = 32640 <= 32767: no lane ever overflows, whatever u and c), and only then widened
// to int32 with one vpmaddwd against a vector of ones. The naive form (vpmaddubsw, vpmaddwd, add
// for every vector) issues two multiplies per 32 products; on Zen 3 both run only on the two
// multiply pipes, so it runs at half the rate of this one, whose int16 add may take any of the
// four vector pipes. 32 vectors of 32 bytes are exactly 4 blocks of 256 weights.
//
// One tile: MR activation rows x NR weight rows, MR * NR int16 accumulators in registers (the
// int32 sums live in memory: touched once per 32 vectors). Per vector of 32 packed bytes, for
// each q = 0..3: the NR weight vectors are expanded ((bytes >> 2q) & 3: the codes of 32
// consecutive weights; a shift and a mask, shared by the MR activation rows), then for each of
// the MR activation rows its vector is loaded once and MR * NR vpmaddubsw + vpaddw issued. Every
// load lies within an activation row's kp bytes or a weight row's kp / 256 blocks.
// Output: out[m, n] = u . c - act_sums[m] - w_corr[n] (mod 2^32; see ternary_gemm.h).

constexpr std::int64_t kPrefetchBlocks = 8;
// vectors of 32 bytes per int16 run: 32 * (2 * 255 * 2) = 32640 <= INT16_MAX
constexpr int kInt16Steps = 32;
constexpr std::int64_t kInt16Blocks = kInt16Steps / 8;  // 8 vectors per 256-weight block
static_assert(kInt16Steps * 2 * 255 * 2 <= 32767, "int16 accumulators would overflow");

using bayesq::add_i16;  // common/add_i16.h: acc += v in place

template <int MR, int NR>
inline __attribute__((always_inline)) void ternary_tile(const bayesq::TernaryProblem& p,
                                                       std::int64_t m, std::int64_t n) {
  const std::int64_t blocks = p.kp / bayesq::kTernaryBlock;
  const std::int64_t as = p.act_stride;
  const std::uint8_t* a = p.act + m * as;
  const std::uint8_t* w[NR];
  for (int j = 0; j < NR; ++j) w[j] = p.w.row(n + j);
  alignas(32) std::int32_t acc32[MR][NR][8] = {};
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i mask = _mm256_set1_epi8(3);
  for (std::int64_t b0 = 0; b0 < blocks; b0 += kInt16Blocks) {
    const std::int64_t b1 = b0 + kInt16Blocks < blocks ? b0 + kInt16Blocks : blocks;
    __m256i acc[MR][NR];
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
    for (std::int64_t b = b0; b < b1; ++b) {
      // The weights come from L2 or beyond: ask for their blocks kPrefetchBlocks ahead (only
      // within the row: no address past its end is even formed).
      if (b + kPrefetchBlocks < blocks)
        for (int j = 0; j < NR; ++j)
          __builtin_prefetch(w[j] + (b + kPrefetchBlocks) * bayesq::kTernaryBlockStride);
      for (int h = 0; h < 2; ++h) {
        const std::int64_t wo = b * bayesq::kTernaryBlockStride + h * 32;
        const std::int64_t ao = b * bayesq::kTernaryBlock + h * 32;
        for (int q = 0; q < 4; ++q) {
          __m256i wq[NR];
          for (int j = 0; j < NR; ++j) {
            const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(w[j] + wo));
            wq[j] = _mm256_and_si256(q == 0 ? v : _mm256_srli_epi16(v, 2 * q), mask);
          }
          for (int i = 0; i < MR; ++i) {
            const __m256i av =
                _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a + i * as + ao + 64 * q));
            for (int j = 0; j < NR; ++j)
              add_i16(acc[i][j], _mm256_maddubs_epi16(av, wq[j]));
          }
        }
      }
    }
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) {
        __m256i* s = reinterpret_cast<__m256i*>(acc32[i][j]);
        _mm256_store_si256(s, _mm256_add_epi32(_mm256_load_si256(s),
                                               _mm256_madd_epi16(acc[i][j], ones)));
      }
  }
  const std::int64_t n_out = p.w.rows;
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      std::uint32_t s = 0;
      for (int l = 0; l < 8; ++l) s += static_cast<std::uint32_t>(acc32[i][j][l]);
      s = s - p.act_sums[m + i] - p.w_corr[n + j];
      p.out[(m + i) * n_out + n + j] = static_cast<std::int32_t>(s);
    }
}

// The last r < NR weight rows of a tile row: one tile MR x r (the activations are loaded once
// for all of them).
template <int MR, int NR>
inline void ternary_cols_tail(const bayesq::TernaryProblem& p, std::int64_t m, std::int64_t n,
                              std::int64_t r) {
  if constexpr (NR > 1) {
    if (r == NR - 1) {
      ternary_tile<MR, NR - 1>(p, m, n);
      return;
    }
    ternary_cols_tail<MR, NR - 1>(p, m, n, r);
  }
}

// Activation rows m .. m + MR against weight rows [n0, n1): NR-wide tiles, then one narrower.
template <int MR, int NR>
inline void ternary_rows(const bayesq::TernaryProblem& p, std::int64_t m, std::int64_t n0,
                         std::int64_t n1) {
  std::int64_t n = n0;
  for (; n + NR <= n1; n += NR) ternary_tile<MR, NR>(p, m, n);
  if (n < n1) ternary_cols_tail<MR, NR>(p, m, n, n1 - n);
}

// The last r < MR activation rows: one tile of r rows (the weights are expanded once for all
// of them, as in a full tile), not r single rows.
template <int MR, int NR, int NR1>
inline void ternary_rows_tail(const bayesq::TernaryProblem& p, std::int64_t m, std::int64_t r,
                              std::int64_t n0, std::int64_t n1) {
  if constexpr (MR > 1) {
    if (r == MR - 1) {
      ternary_rows<MR - 1, (MR - 1 == 1 ? NR1 : NR)>(p, m, n0, n1);
      return;
    }
    ternary_rows_tail<MR - 1, NR, NR1>(p, m, r, n0, n1);
  }
}

// Blocked for the caches: weight rows in chunks of kChunkRows (kChunkRows * kp / 4 bytes, ~128 KB
// at K = 4096, stay in L2 while every activation tile passes over them; the MR activation rows
// of a tile, MR * kp bytes, stay in L1 while the tile moves along the chunk).
template <int MR, int NR, int NR1>
inline void ternary_rect_body(const bayesq::TernaryProblem& p, std::int64_t m0, std::int64_t m1,
                              std::int64_t n0, std::int64_t n1) {
  constexpr std::int64_t kChunkRows = 128 / NR * NR;  // whole tiles
  for (std::int64_t c0 = n0; c0 < n1; c0 += kChunkRows) {
    const std::int64_t c1 = c0 + kChunkRows < n1 ? c0 + kChunkRows : n1;
    std::int64_t m = m0;
    for (; m + MR <= m1; m += MR) ternary_rows<MR, NR>(p, m, c0, c1);
    if (m < m1) ternary_rows_tail<MR, NR, NR1>(p, m, m1 - m, c0, c1);
  }
}
