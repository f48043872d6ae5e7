// Bit-plane packing: the range check and row sums (one portable pass the compiler vectorizes),
// the portable plane extraction, unpacking, layout checks and the bitserial ISA choice.
// The AVX2 and AVX-512 plane extraction live in bitpack_avx2.cpp and bitpack_avx512.cpp.
#include "bitserial/bitpack.h"

#include <vector>

#include "bitserial/bitpack_quantize_body.h"
#include "common/thread_pool.h"

#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <string>

namespace bayesq {

void check_layout(const BitPlanesView& v, std::int64_t planes_size, const char* what) {
  const std::string name(what);
  if (v.rows < 0) throw std::invalid_argument(name + ": negative number of rows");
  if (v.k < 1 || v.k > kMaxK)
    throw std::invalid_argument(name + ": k (the reduction length) must lie in 1..2^40");
  if (v.words != words_per_plane(v.k))
    throw std::invalid_argument(name + ": words per plane row must be " +
                                std::to_string(words_per_plane(v.k)) + " for k = " +
                                std::to_string(v.k));
  if (v.plane_offsets == nullptr || v.plane_offsets[0] != 0)
    throw std::invalid_argument(name + ": plane_offsets must start at 0");
  const int max_bits = v.mode == CodeMode::kPlusMinusOne ? 1 : kMaxPlanes;
  for (std::int64_t r = 0; r < v.rows; ++r) {
    const std::int64_t b = v.plane_offsets[r + 1] - v.plane_offsets[r];
    if (b < 0 || b > max_bits)
      throw std::invalid_argument(name + ": row " + std::to_string(r) + " has " +
                                  std::to_string(b) + " planes (allowed 0.." +
                                  std::to_string(max_bits) + ")");
  }
  const std::int64_t need = (v.plane_offsets[v.rows] + kPlaneRowPad) * v.words;
  if (planes_size < need)
    throw std::invalid_argument(name + ": planes buffer holds " + std::to_string(planes_size) +
                                " words, the layout needs " + std::to_string(need));
}

std::int64_t max_abs_code(const BitPlanesView& v) {
  int widest = 0;
  for (std::int64_t r = 0; r < v.rows; ++r) widest = std::max(widest, v.bits(r));
  if (widest == 0) return 0;
  switch (v.mode) {
    case CodeMode::kUnsigned: return (std::int64_t{1} << widest) - 1;
    case CodeMode::kSigned: return std::int64_t{1} << (widest - 1);
    default: return 1;
  }
}

Isa resolve_bitserial_isa(const char* isa) {
  const CpuFeatures& f = cpu_features();
  bool full512 = false;
#if defined(__x86_64__) || defined(__i386__)
  full512 = f.avx512f && f.avx512vpopcntdq && __builtin_cpu_supports("avx512bw") &&
            __builtin_cpu_supports("avx512vl");
#endif
  if (isa == nullptr) return full512 ? Isa::kAvx512 : f.avx2 ? Isa::kAvx2 : Isa::kPortable;
  const Isa chosen = resolve_isa(isa);  // throws for unknown names and missing AVX2 / AVX-512F
  if (chosen == Isa::kAvx512 && !full512)
    throw std::invalid_argument("the bitserial avx512 path needs AVX-512 BW, VL and VPOPCNTDQ");
  return chosen;
}

namespace {

// Counts the codes of one row outside [lo, hi] (and, for +-1 rows, the zeros) and sums them.
// T is int8_t or uint8_t, the code's type; int32 partial sums over blocks of 2^20 cannot
// overflow (2^20 * 255 < 2^31).
template <typename T>
void check_and_sum(const std::uint8_t* bytes, std::int64_t k, int lo, int hi, bool zero_bad,
                   std::int64_t& bad, std::int64_t& sum) {
  const T* codes = reinterpret_cast<const T*>(bytes);
  for (std::int64_t b0 = 0; b0 < k; b0 += (std::int64_t{1} << 20)) {
    const std::int64_t b1 = std::min(k, b0 + (std::int64_t{1} << 20));
    std::int32_t s = 0, nbad = 0;
    for (std::int64_t t = b0; t < b1; ++t) {
      const int x = codes[t];
      s += x;
      nbad += (x < lo) | (x > hi) | (zero_bad & (x == 0));
    }
    sum += s;
    bad += nbad;
  }
}

}  // namespace

void pack_rows_portable(const std::uint8_t* codes, const std::int64_t* plane_offsets,
                        std::int64_t row_begin, std::int64_t row_end, std::int64_t k,
                        CodeMode mode, word_t* planes) {
  const std::int64_t words = words_per_plane(k);
  // +-1 codes: bit 7 of (code ^ 0x80) is 1 exactly for +1; other modes: bit j of the code.
  const std::uint8_t flip = mode == CodeMode::kPlusMinusOne ? 0x80 : 0x00;
  for (std::int64_t r = row_begin; r < row_end; ++r) {
    const std::uint8_t* row = codes + r * k;
    const int bits = static_cast<int>(plane_offsets[r + 1] - plane_offsets[r]);
    for (int j = 0; j < bits; ++j) {
      const int shift = mode == CodeMode::kPlusMinusOne ? 7 : j;
      word_t* out = planes + (plane_offsets[r] + j) * words;
      for (std::int64_t w = 0; w < words; ++w) {
        word_t word = 0;
        const std::int64_t t_end = std::min<std::int64_t>(64, k - 64 * w);
        for (std::int64_t t = 0; t < t_end; ++t)
          word |= static_cast<word_t>(((row[64 * w + t] ^ flip) >> shift) & 1u) << t;
        out[w] = word;  // positions >= k stay zero (t_end <= 0 past the end)
      }
    }
  }
}

std::int64_t pack_bit_planes(const std::uint8_t* codes, const std::int64_t* plane_offsets,
                             std::int64_t rows, std::int64_t k, CodeMode mode, word_t* planes,
                             std::int64_t* row_sums, const char* isa) {
  const Isa chosen = resolve_bitserial_isa(isa);
  std::int64_t bad = 0;
  for (std::int64_t r = 0; r < rows; ++r) {
    const int b = static_cast<int>(plane_offsets[r + 1] - plane_offsets[r]);
    const std::uint8_t* row = codes + r * k;
    std::int64_t sum = 0;
    if (b == 0) {
      check_and_sum<std::int8_t>(row, k, 0, 0, false, bad, sum);
    } else if (mode == CodeMode::kUnsigned) {
      check_and_sum<std::uint8_t>(row, k, 0, (1 << b) - 1, false, bad, sum);
    } else if (mode == CodeMode::kSigned) {
      check_and_sum<std::int8_t>(row, k, -(1 << (b - 1)), (1 << (b - 1)) - 1, false, bad, sum);
    } else {
      check_and_sum<std::int8_t>(row, k, -1, 1, true, bad, sum);
    }
    row_sums[r] = sum;
  }
  if (bad) return bad;
  switch (chosen) {
    case Isa::kAvx512: pack_rows_avx512(codes, plane_offsets, 0, rows, k, mode, planes); break;
    case Isa::kAvx2: pack_rows_avx2(codes, plane_offsets, 0, rows, k, mode, planes); break;
    default: pack_rows_portable(codes, plane_offsets, 0, rows, k, mode, planes); break;
  }
  const std::int64_t words = words_per_plane(k);
  std::memset(planes + plane_offsets[rows] * words, 0,
              static_cast<std::size_t>(kPlaneRowPad * words) * sizeof(word_t));
  return 0;
}

void unpack_bit_planes(const BitPlanesView& v, std::uint8_t* codes) {
  for (std::int64_t r = 0; r < v.rows; ++r) {
    const int bits = v.bits(r);
    std::uint8_t* row = codes + r * v.k;
    for (std::int64_t t = 0; t < v.k; ++t) {
      std::int32_t x = row_offset(v.mode, bits);
      for (int j = 0; j < bits; ++j) {
        const word_t word = v.plane(v.plane_offsets[r] + j)[t / 64];
        x += plane_coefficient(v.mode, bits, j) * static_cast<std::int32_t>((word >> (t % 64)) & 1u);
      }
      row[t] = static_cast<std::uint8_t>(x);  // two's complement byte for negative codes
    }
  }
}

void quantize_rows_portable(const float* x, const float* scale, std::int64_t scale_stride,
                            std::int64_t r0, std::int64_t r1, std::int64_t k, int bits,
                            CodeMode mode, std::uint8_t* codes, std::int64_t* row_sums,
                            std::int64_t& bad) {
  quantize_rows_body(x, scale, scale_stride, r0, r1, k, bits, mode, codes, row_sums, bad);
}

std::int64_t quantize_pack_bit_planes(const float* x, const float* scale,
                                      std::int64_t scale_stride, std::int64_t rows,
                                      std::int64_t k, int bits, CodeMode mode, word_t* planes,
                                      std::int64_t* row_sums, const char* isa, int num_threads) {
  using Quantize = void (*)(const float*, const float*, std::int64_t, std::int64_t, std::int64_t,
                            std::int64_t, int, CodeMode, std::uint8_t*, std::int64_t*,
                            std::int64_t&);
  using Pack = void (*)(const std::uint8_t*, const std::int64_t*, std::int64_t, std::int64_t,
                        std::int64_t, CodeMode, word_t*);
  Quantize quantize = quantize_rows_portable;
  Pack pack = pack_rows_portable;
  switch (resolve_bitserial_isa(isa)) {
    case Isa::kAvx512: quantize = quantize_rows_avx512, pack = pack_rows_avx512; break;
    case Isa::kAvx2: quantize = quantize_rows_avx2, pack = pack_rows_avx2; break;
    default: break;
  }
  // Rows go through a small codes buffer in blocks that stay in L1/L2 between the quantizer
  // writing them and the packer reading them.
  const std::int64_t block = std::max<std::int64_t>(1, std::min<std::int64_t>(64, (32 << 10) / k));
  const std::int64_t blocks = (rows + block - 1) / block;
  // One thread per at least 64 KiB of input, so that small batches stay on the calling thread.
  const std::int64_t by_size = std::max<std::int64_t>(1, rows * k / (16 << 10));
  const int threads = static_cast<int>(std::min<std::int64_t>({std::max(1, num_threads), blocks, by_size}));
  std::vector<std::int64_t> bad(static_cast<std::size_t>(threads), 0);
  parallel_for(threads, [&](int t) {
    std::vector<std::uint8_t> codes(static_cast<std::size_t>(block * k));
    std::vector<std::int64_t> offsets(static_cast<std::size_t>(block + 1));
    for (std::int64_t b = blocks * t / threads; b < blocks * (t + 1) / threads; ++b) {
      const std::int64_t r0 = b * block, r1 = std::min(rows, r0 + block);
      quantize(x, scale, scale_stride, r0, r1, k, bits, mode, codes.data(), row_sums, bad[t]);
      for (std::int64_t i = 0; i <= r1 - r0; ++i) offsets[i] = (r0 + i) * bits;
      pack(codes.data(), offsets.data(), 0, r1 - r0, k, mode, planes);
    }
  });
  std::int64_t nonfinite = 0;
  for (const std::int64_t b : bad) nonfinite += b;
  const std::int64_t words = words_per_plane(k);
  std::memset(planes + rows * bits * words, 0,
              static_cast<std::size_t>(kPlaneRowPad * words) * sizeof(word_t));
  return nonfinite;
}

}  // namespace bayesq
