// The register-tiled ternary x u8 kernel, written once for any vector width. Included by
// ternary_gemm_avx512vnni.cpp and ternary_gemm_avxvnni.cpp, each after defining, inside an
// anonymous namespace (the two are compiled with different -m flags and must not share symbols),
// a struct V with
//   reg                       the vector type;  kBytes  its width in bytes (64 or 32);
//   load(p), zero(),  expand(v, q)  (every byte: (byte >> 2q) & 3, the q-th codes),
//   dot(acc, u8, s8)  (vpdpbusd),  reduce(acc)  (sum of the int32 lanes, mod 2^32).
//
// One tile: MR activation rows x NR weight rows, MR * NR accumulators. Per block of 256 weights
// and per vector of kBytes packed bytes, for each q = 0..3: the NR weight vectors are loaded and
// expanded ((bytes >> 2q) & 3: the codes c = w + 1 of kBytes consecutive weights), the MR
// activation vectors of the same positions loaded, and MR * NR vpdpbusd issued. Every load lies
// within an activation row's kp bytes or a weight row's kp / 256 blocks: no read past an end.
// Output: out[m, n] = u . c - act_sums[m] - w_corr[n] (mod 2^32; see ternary_gemm.h).

constexpr std::int64_t kPrefetchBlocks = 8;

template <int MR, int NR>
inline __attribute__((always_inline)) void ternary_tile(const bayesq::TernaryProblem& p,
                                                       std::int64_t m, std::int64_t n) {
  const std::int64_t blocks = p.kp / bayesq::kTernaryBlock;
  const std::int64_t as = p.act_stride;
  const std::uint8_t* a = p.act + m * as;
  const std::uint8_t* w[NR];
  for (int j = 0; j < NR; ++j) w[j] = p.w.row(n + j);
  typename V::reg acc[MR][NR];
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) acc[i][j] = V::zero();
  for (std::int64_t b = 0; b < blocks; ++b) {
    // The weights come from L2 or beyond: ask for their blocks kPrefetchBlocks ahead (only
    // within the row: no address past its end is even formed).
    if (b + kPrefetchBlocks < blocks)
      for (int j = 0; j < NR; ++j)
        __builtin_prefetch(w[j] + (b + kPrefetchBlocks) * bayesq::kTernaryBlockStride);
    for (int h = 0; h < 64 / V::kBytes; ++h) {
      const std::int64_t wo = b * bayesq::kTernaryBlockStride + h * V::kBytes;
      const std::int64_t ao = b * bayesq::kTernaryBlock + h * V::kBytes;
      for (int q = 0; q < 4; ++q) {
        typename V::reg av[MR];
        for (int i = 0; i < MR; ++i) av[i] = V::load(a + i * as + ao + 64 * q);
        for (int j = 0; j < NR; ++j) {
          const typename V::reg wq = V::expand(V::load(w[j] + wo), q);
          for (int i = 0; i < MR; ++i) acc[i][j] = V::dot(acc[i][j], av[i], wq);
        }
      }
    }
  }
  const std::int64_t n_out = p.w.rows;
  for (int i = 0; i < MR; ++i)
    for (int j = 0; j < NR; ++j) {
      const std::uint32_t s = V::reduce(acc[i][j]) - p.act_sums[m + i] - p.w_corr[n + j];
      p.out[(m + i) * n_out + n + j] = static_cast<std::int32_t>(s);
    }
}

// Activation rows m .. m + MR against weight rows [n0, n1): NR-wide tiles, then single rows.
template <int MR, int NR>
inline void ternary_rows(const bayesq::TernaryProblem& p, std::int64_t m, std::int64_t n0,
                         std::int64_t n1) {
  std::int64_t n = n0;
  for (; n + NR <= n1; n += NR) ternary_tile<MR, NR>(p, m, n);
  for (; n < n1; ++n) ternary_tile<MR, 1>(p, m, n);
}

// Blocked for the caches: weight rows in chunks of kChunkRows (kChunkRows * kp / 4 bytes, 128 KB
// at K = 4096, stay in L2 while every activation tile passes over them); inside a chunk, MR
// activation rows x NR weight rows at a time, then single activation rows x NR1 weight rows.
// (Expanding a chunk once to a byte per weight and running plain u8 x s8 tiles on it was
// measured 2x slower at batch 64 and 1024: the expanded chunk is read from L2 at four times the
// bytes, and that, not the expansion in registers, bounds the loop.)
template <int MR, int NR, int NR1>
inline void ternary_rect_body(const bayesq::TernaryProblem& p, std::int64_t m0, std::int64_t m1,
                              std::int64_t n0, std::int64_t n1) {
  constexpr std::int64_t kChunkRows = 128;
  for (std::int64_t c0 = n0; c0 < n1; c0 += kChunkRows) {
    const std::int64_t c1 = c0 + kChunkRows < n1 ? c0 + kChunkRows : n1;
    std::int64_t m = m0;
    for (; m + MR <= m1; m += MR) ternary_rows<MR, NR>(p, m, c0, c1);
    for (; m < m1; ++m) ternary_rows<1, NR1>(p, m, c0, c1);
  }
}
