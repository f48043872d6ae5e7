// The data movement of a NetPlan's steps (net_plan.h): im2col of channels-last images, column
// gathers, pooling and layout transposes, each split across the pool's threads by rows. Header
// only (templates over float activations and byte codes); used by net_plan.cpp alone.
#ifndef BAYESQ_PLAN_STEPS_H_
#define BAYESQ_PLAN_STEPS_H_

#include <algorithm>
#include <cstdint>
#include <cstring>

#include "common/thread_pool.h"
#include "runner/net_plan.h"

namespace bayesq {
namespace plan_steps {

// Runs body(r0, r1) over [0, rows) on up to `threads` threads, one per at least `min_work`
// units of work (work = rows * per_row): small steps stay on the calling thread.
template <typename Body>
void split_rows(std::int64_t rows, std::int64_t per_row, int threads, const Body& body) {
  constexpr std::int64_t min_work = 32 << 10;
  const std::int64_t by_size = std::max<std::int64_t>(1, rows * per_row / min_work);
  const int t_count = static_cast<int>(std::min<std::int64_t>({std::max(1, threads), rows, by_size}));
  if (t_count <= 1) {
    if (rows > 0) body(std::int64_t{0}, rows);
    return;
  }
  parallel_for(t_count, [&](int t) {
    const std::int64_t r0 = rows * t / t_count, r1 = rows * (t + 1) / t_count;
    if (r0 < r1) body(r0, r1);
  });
}

// Copies `len` values; for bytes, runs of up to 16 go as whole 8- or 16-byte moves when `room`
// (the values writable at dst) allows, which may read up to 15 bytes past the run (the arena
// keeps 64 bytes of slack) and write past it within the room (what follows in the row overwrites
// it): an im2col row of a small kernel is many short runs, which memcpy calls would make the
// slowest part of a first convolution.
template <typename T>
inline void copy_run(T* dst, const T* src, std::int64_t len, std::int64_t room) {
  if (sizeof(T) == 1 && len <= 16 && room >= (len > 8 ? 16 : 8)) {
    std::uint64_t a, b;
    std::memcpy(&a, src, 8);
    std::memcpy(dst, &a, 8);
    if (len > 8) {
      std::memcpy(&b, src + 8, 8);
      std::memcpy(dst + 8, &b, 8);
    }
    return;
  }
  std::memcpy(dst, src, static_cast<std::size_t>(len) * sizeof(T));
}

// One im2col row of a channels-last image (h x w x c): the kernel's window at output (y, x), kh
// runs of kw * c values in (i, j, c) order, zeros where the window leaves the image, then zeros
// up to row_stride.
template <typename T>
inline void im2col_row(const T* img, std::int64_t h, std::int64_t w, std::int64_t c,
                       const PlanLayer& l, std::int64_t y, std::int64_t x, T* dst,
                       std::int64_t row_stride) {
  const std::int64_t run = l.kw * c, row_len = l.kh * run;
  const std::int64_t x0 = x * l.sw - l.pw;
  const std::int64_t j0 = std::max<std::int64_t>(0, -x0);  // kernel columns inside: [j0, j1)
  const std::int64_t j1 = std::min<std::int64_t>(l.kw, w - x0);
  for (std::int64_t i = 0; i < l.kh; ++i) {
    T* seg = dst + i * run;
    const std::int64_t iy = y * l.sh - l.ph + i;
    if (iy < 0 || iy >= h || j0 >= j1) {
      std::fill(seg, seg + run, T(0));
    } else if (j0 == 0 && j1 == l.kw) {
      copy_run(seg, img + (iy * w + x0) * c, run, row_stride - i * run);
    } else {
      std::fill(seg, seg + j0 * c, T(0));
      std::memcpy(seg + j0 * c, img + (iy * w + x0 + j0) * c,
                  static_cast<std::size_t>((j1 - j0) * c) * sizeof(T));
      std::fill(seg + j1 * c, seg + run, T(0));
    }
  }
  std::fill(dst + row_len, dst + row_stride, T(0));
}

// im2col of channels-last images (n x h x w x c) into rows of row_stride >= kh * kw * c values.
// Rows in output order (sample, y, x); or, with pool2, in the order of 2 x 2 pooling windows
// (sample, y / 2, x / 2, y % 2, x % 2) over the oh / 2 * 2 x ow / 2 * 2 outputs that a pooling
// with floor keeps, four adjacent rows per window.
template <typename T>
void im2col_nhwc(const T* img, std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c,
                 const PlanLayer& l, std::int64_t oh, std::int64_t ow, T* cols,
                 std::int64_t row_stride, bool pool2, int threads) {
  const std::int64_t ph = pool2 ? oh / 2 : oh, pw = pool2 ? ow / 2 : ow;
  const std::int64_t per_row = (pool2 ? 4 : 1) * pw * row_stride;
  split_rows(n * ph, per_row, threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {  // r = sample * ph + (pooled) output row
      const std::int64_t s = r / ph, py = r % ph;
      const T* sample = img + s * h * w * c;
      T* dst = cols + r * per_row;
      for (std::int64_t px = 0; px < pw; ++px) {
        if (!pool2) {
          im2col_row(sample, h, w, c, l, py, px, dst + px * row_stride, row_stride);
          continue;
        }
        for (int q = 0; q < 4; ++q)
          im2col_row(sample, h, w, c, l, 2 * py + q / 2, 2 * px + q % 2,
                     dst + (4 * px + q) * row_stride, row_stride);
      }
    }
  });
}

// out[r, t] = in[r, index[t]] for rows x k, from rows `width` apart into rows `stride` >= k
// apart (zeros after the k values).
template <typename T>
void gather_columns(const T* in, std::int64_t rows, std::int64_t width, const std::int64_t* index,
                    std::int64_t k, T* out, std::int64_t stride, int threads) {
  split_rows(rows, k, threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      for (std::int64_t t = 0; t < k; ++t) out[r * stride + t] = in[r * width + index[t]];
      for (std::int64_t t = k; t < stride; ++t) out[r * stride + t] = T(0);
    }
  });
}

// (n, a, b) -> (n, b, a) per sample: channels-last <-> torch's channels-first.
void transpose_samples(const float* in, std::int64_t n, std::int64_t a, std::int64_t b,
                       float* out) {
  for (std::int64_t s = 0; s < n; ++s)
    for (std::int64_t i = 0; i < a; ++i)
      for (std::int64_t j = 0; j < b; ++j) out[(s * b + j) * a + i] = in[(s * a + i) * b + j];
}

// k x k pooling with stride k of channels-last images (n x h x w x c) into (n x h/k x w/k x c).
// The average sums each window row by row in float32 and divides by k * k, as torch's CPU kernel.
void pool_nhwc(const float* in, std::int64_t n, std::int64_t h, std::int64_t w, std::int64_t c,
               int k, bool average, float* out, int threads) {
  const std::int64_t oh = h / k, ow = w / k;
  const float divisor = static_cast<float>(k * k);
  split_rows(n * oh, ow * c * k * k, threads, [&](std::int64_t r0, std::int64_t r1) {
    for (std::int64_t r = r0; r < r1; ++r) {
      const std::int64_t s = r / oh, y = r % oh;
      for (std::int64_t x = 0; x < ow; ++x) {
        float* dst = out + (r * ow + x) * c;
        const float* window = in + ((s * h + y * k) * w + x * k) * c;
        // over the channels innermost (contiguous, vectorized), the window in torch's order
        for (std::int64_t ch = 0; ch < c; ++ch) dst[ch] = average ? 0.0f : window[ch];
        for (int i = 0; i < k; ++i)
          for (int j = 0; j < k; ++j) {
            const float* v = window + (i * w + j) * c;
            if (average) {
              for (std::int64_t ch = 0; ch < c; ++ch) dst[ch] = dst[ch] + v[ch];
            } else {
              for (std::int64_t ch = 0; ch < c; ++ch) dst[ch] = v[ch] > dst[ch] ? v[ch] : dst[ch];
            }
          }
        if (average)
          for (std::int64_t ch = 0; ch < c; ++ch) dst[ch] = dst[ch] / divisor;
      }
    }
  });
}

}  // namespace plan_steps
}  // namespace bayesq

#endif  // BAYESQ_PLAN_STEPS_H_
