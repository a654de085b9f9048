// The SIMD bodies of the sparse 1x1 conv / Linear kernels (spmm.h), shared by the x86 AVX2 /
// AVX-512 files and the NEON file. S is a traits type: Vec, width, zero, load, store, load_part /
// store_part (the first n < width lanes; the rest read as 0 and are not written), set1, fma(a, b,
// c) = a * b + c, add, clamp(v, lo, hi) (NaN propagates), hsum, gather(base, idx) (int32 indices)
// and gather16 (uint16 indices).
// Include it after the file's `#pragma GCC target(...)` so each ISA gets its own instantiation.
#pragma once

#include <cstdint>
#include <utility>

#include "spmm.h"

namespace patsparse {
namespace spmm_simd {

// Gathers X[idx[0 .. width)] (32- or 16-bit column indices).
template <class S>
typename S::Vec gather(const float* x, const int32_t* idx) { return S::gather(x, idx); }
template <class S>
typename S::Vec gather(const float* x, const uint16_t* idx) { return S::gather16(x, idx); }

// Vector v of a tile of V vectors from p (the last one holds `tail` lanes when Tail).
template <class S, int V, bool Tail>
typename S::Vec load_vec(const float* p, int v, int tail) {
  return (Tail && v == V - 1) ? S::load_part(p + v * S::width, tail) : S::load(p + v * S::width);
}

// Output vector v of row yo: epilogue.h's clamp(acc * sc + sh + residual, lo, hi), stored.
template <class S, int V, bool Tail>
void store_out(typename S::Vec acc, typename S::Vec sc, typename S::Vec sh, typename S::Vec lo, typename S::Vec hi,
               float* yo, const float* ro, int v, int tail) {
  typename S::Vec q = S::fma(acc, sc, sh);
  if (ro) q = S::add(q, load_vec<S, V, Tail>(ro, v, tail));
  q = S::clamp(q, lo, hi);
  if (Tail && v == V - 1) S::store_part(yo + v * S::width, q, tail);
  else S::store(yo + v * S::width, q);
}

// Vectors [V0, V0 + N) of four rows o..o+3 that keep the same columns (CsrView::shared4): one load of
// each X vector feeds the four rows (row r's nonzeros are row o's shifted by r * len).
template <class S, class I, int V, bool Tail, int V0, int N>
void rows4_part(const CsrView& w, const I* col, const SpmmIo<float>& io, const float* x, float* y,
                const float* res, int64_t o, int tail) {
  using Vec = typename S::Vec;
  Vec acc[4][N];
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r)
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) acc[r][n] = S::zero();
  const int64_t k0 = w.row_ptr[o], len = w.row_ptr[o + 1] - k0;
  const float* val = w.values + k0;
  for (int64_t i = 0; i < len; ++i) {
    const float* p = x + col[k0 + i] * io.x_chan;
    const Vec w0 = S::set1(val[i]), w1 = S::set1(val[i + len]), w2 = S::set1(val[i + 2 * len]),
              w3 = S::set1(val[i + 3 * len]);
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) {
      const Vec xv = load_vec<S, V, Tail>(p, V0 + n, tail);
      acc[0][n] = S::fma(w0, xv, acc[0][n]);
      acc[1][n] = S::fma(w1, xv, acc[1][n]);
      acc[2][n] = S::fma(w2, xv, acc[2][n]);
      acc[3][n] = S::fma(w3, xv, acc[3][n]);
    }
  }
  const Vec lo = S::set1(io.lo), hi = S::set1(io.hi);
#pragma GCC unroll 4
  for (int r = 0; r < 4; ++r) {
    const Vec sc = S::set1(io.scale ? io.scale[o + r] : 1.f), sh = S::set1(io.shift ? io.shift[o + r] : 0.f);
    float* yo = y + (o + r) * io.y_chan;
    const float* ro = res ? res + (o + r) * io.y_chan : nullptr;
#pragma GCC unroll 8
    for (int n = 0; n < N; ++n) store_out<S, V, Tail>(acc[r][n], sc, sh, lo, hi, yo, ro, V0 + n, tail);
  }
}

// Four shared-column rows over V vectors, in parts of as many vectors as the registers hold
// (4 rows x 4 vectors of accumulators with 16-float vectors, AVX-512; 4 x 2 with narrower ones).
template <class S, class I, int V, bool Tail, int V0 = 0>
void rows4(const CsrView& w, const I* col, const SpmmIo<float>& io, const float* x, float* y, const float* res,
           int64_t o, int tail) {
  constexpr int C = S::width >= 16 ? 4 : 2;
  constexpr int N = V - V0 < C ? V - V0 : C;
  rows4_part<S, I, V, Tail, V0, N>(w, col, io, x, y, res, o, tail);
  if constexpr (V0 + N < V) rows4<S, I, V, Tail, V0 + N>(w, col, io, x, y, res, o, tail);
}

// Column kernel: rows [o0, o1) x V vectors of columns starting at j0 (the last vector holds `tail`
// lanes when Tail). Every nonzero W[o, k] broadcasts against the contiguous X[k, j0 ..] vectors.
// Short tiles (V <= 4) sum even and odd nonzeros into two accumulator sets to hide FMA latency.
template <class S, class I, int V, bool Tail>
void column_rows(const CsrView& w, const I* col, const SpmmIo<float>& io, int64_t b, int64_t o0, int64_t o1,
                 int64_t j0, int tail) {
  using Vec = typename S::Vec;
  constexpr bool kTwo = V <= 4;
  const float* x = io.x + b * io.x_image + j0;
  float* y = io.y + b * io.y_image + j0;
  const float* res = io.residual ? io.residual + b * io.y_image + j0 : nullptr;
  const int64_t xc = io.x_chan;
  const Vec lo = S::set1(io.lo), hi = S::set1(io.hi);
  auto load = [tail](const float* p, int v) { return load_vec<S, V, Tail>(p, v, tail); };
  for (int64_t o = o0; o < o1; ++o) {
    if (w.shared4 && (o & 3) == 0 && o + 4 <= o1 && w.shared4[o >> 2]) {
      rows4<S, I, V, Tail>(w, col, io, x, y, res, o, tail);
      o += 3;
      continue;
    }
    Vec acc[V], acc2[kTwo ? V : 1];
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) acc[v] = S::zero();
    if constexpr (kTwo)
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc2[v] = S::zero();
    const float* val = w.values;
    int64_t k = w.row_ptr[o];
    const int64_t k1 = w.row_ptr[o + 1];
    if constexpr (kTwo) {
      for (; k + 1 < k1; k += 2) {
        const float* p0 = x + col[k] * xc;
        const float* p1 = x + col[k + 1] * xc;
        const Vec w0 = S::set1(val[k]), w1 = S::set1(val[k + 1]);
#pragma GCC unroll 16
        for (int v = 0; v < V; ++v) {
          acc[v] = S::fma(w0, load(p0, v), acc[v]);
          acc2[v] = S::fma(w1, load(p1, v), acc2[v]);
        }
      }
    }
    for (; k < k1; ++k) {
      const float* p = x + col[k] * xc;
      const Vec wk = S::set1(val[k]);
#pragma GCC unroll 16
      for (int v = 0; v < V; ++v) acc[v] = S::fma(wk, load(p, v), acc[v]);
    }
    const Vec sc = S::set1(io.scale ? io.scale[o] : 1.f), sh = S::set1(io.shift ? io.shift[o] : 0.f);
    float* yo = y + o * io.y_chan;
    const float* ro = res ? res + o * io.y_chan : nullptr;
#pragma GCC unroll 16
    for (int v = 0; v < V; ++v) {
      Vec a = acc[v];
      if constexpr (kTwo) a = S::add(a, acc2[v]);
      store_out<S, V, Tail>(a, sc, sh, lo, hi, yo, ro, v, tail);
    }
  }
}

template <class S, class I, int MaxV>
struct ColumnTable {
  using Fn = void (*)(const CsrView&, const I*, const SpmmIo<float>&, int64_t, int64_t, int64_t, int64_t, int);
  Fn full[MaxV + 1] = {}, tail[MaxV + 1] = {};
  template <int... Vs>
  explicit ColumnTable(std::integer_sequence<int, Vs...>) {
    ((full[Vs + 1] = &column_rows<S, I, Vs + 1, false>), ...);
    ((tail[Vs + 1] = &column_rows<S, I, Vs + 1, true>), ...);
  }
};

template <class S, class I, int MaxV>
void column_tile_of(const CsrView& w, const I* col, const SpmmIo<float>& io, int64_t b, int64_t o0, int64_t o1,
                    int64_t j0, int64_t len) {
  static const ColumnTable<S, I, MaxV> table(std::make_integer_sequence<int, MaxV>{});
  const int tail = static_cast<int>(len % S::width);
  const int vecs = static_cast<int>((len + S::width - 1) / S::width);
  (tail ? table.tail[vecs] : table.full[vecs])(w, col, io, b, o0, o1, j0, tail);
}

template <class S, int MaxV>
void column_tile(const CsrView& w, const SpmmIo<float>& io, int64_t b, int64_t o0, int64_t o1, int64_t j0,
                 int64_t len) {
  if (w.col16) column_tile_of<S, uint16_t, MaxV>(w, w.col16, io, b, o0, o1, j0, len);
  else column_tile_of<S, int32_t, MaxV>(w, w.col, io, b, o0, o1, j0, len);
}

// Gather kernel (X's channels contiguous: Linear samples, channels_last pixels): per row, a dot
// product of its nonzeros with X[k]: vector gathers over whole vectors of nonzeros (two sums), the
// last < width nonzeros by scalar loads (a masked gather of a short tail cost more than the rest of
// a short row on this project's AMD EPYC box; spmm.md).
template <class S, class I>
void gather_rows_of(const CsrView& w, const I* col, const SpmmIo<float>& io, int64_t b, int64_t j, int64_t o0,
                    int64_t o1) {
  using Vec = typename S::Vec;
  constexpr int W = S::width;
  const float* x = io.x + b * io.x_image + j * io.x_col;
  const float* val = w.values;
  const int64_t out = b * io.y_image + j * io.y_col;
  for (int64_t o = o0; o < o1; ++o) {
    int64_t k = w.row_ptr[o];
    const int64_t k1 = w.row_ptr[o + 1];
    float acc = 0.f;
    if (k + W <= k1) {
      Vec a0 = S::zero(), a1 = S::zero();
      for (; k + 2 * W <= k1; k += 2 * W) {
        a0 = S::fma(S::load(val + k), gather<S>(x, col + k), a0);
        a1 = S::fma(S::load(val + k + W), gather<S>(x, col + k + W), a1);
      }
      if (k + W <= k1) {
        a0 = S::fma(S::load(val + k), gather<S>(x, col + k), a0);
        k += W;
      }
      acc = S::hsum(S::add(a0, a1));
    }
    float t0 = 0.f, t1 = 0.f;
    for (; k + 2 <= k1; k += 2) {
      t0 += val[k] * x[col[k]];
      t1 += val[k + 1] * x[col[k + 1]];
    }
    if (k < k1) t0 += val[k] * x[col[k]];
    acc += t0 + t1;
    const int64_t at = out + o * io.y_chan;
    io.y[at] = spmm_epilogue(io, o, acc, io.residual ? io.residual[at] : 0.f);
  }
}

template <class S>
void gather_rows(const CsrView& w, const SpmmIo<float>& io, int64_t b, int64_t j, int64_t o0, int64_t o1) {
  if (w.col16) gather_rows_of<S, uint16_t>(w, w.col16, io, b, j, o0, o1);
  else gather_rows_of<S, int32_t>(w, w.col, io, b, j, o0, o1);
}

template <class S, int MaxV>
SpmmKernels make_kernels(const char* isa) {
  SpmmKernels k;
  k.isa = isa;
  k.vec_len = S::width;
  k.max_vecs = MaxV;
  k.column_tile = &column_tile<S, MaxV>;
  k.gather_rows = &gather_rows<S>;
  return k;
}

}  // namespace spmm_simd
}  // namespace patsparse
