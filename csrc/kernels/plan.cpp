#include "plan.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <stdexcept>

namespace patsparse {

std::shared_ptr<const ExecPlan> build_plan(const PatternWeights<float>& w, int64_t in_channels) {
  const std::string err = validate(w, in_channels);
  if (!err.empty()) throw std::invalid_argument(err);
  auto plan = std::make_shared<ExecPlan>();
  ExecPlan& p = *plan;
  p.in_channels = in_channels;
  p.out_channels = w.out_channels;
  p.entries = w.entries;
  p.num_patterns = w.num_patterns;
  p.nnz = w.nnz;
  p.patterns.assign(w.patterns, w.patterns + w.num_patterns * w.entries);
  const int64_t cout = w.out_channels, E = w.entries;

  // Kernels of each filter sorted by (channel, pattern): the filter then streams the slab in order.
  std::vector<int32_t> order(static_cast<size_t>(w.nnz));
  std::iota(order.begin(), order.end(), 0);
  auto key = [&](int32_t k) { return (static_cast<int64_t>(w.kernel_channel[k]) << 8) | w.kernel_pattern[k]; };
  for (int64_t o = 0; o < cout; ++o)
    std::stable_sort(order.begin() + w.filter_ptr[o], order.begin() + w.filter_ptr[o + 1],
                     [&](int32_t a, int32_t b) { return key(a) < key(b); });

  // Filters with identical (channel, pattern) lists are gathered (stable: lowest channel first).
  auto less_list = [&](int32_t a, int32_t b) {
    const int32_t la = w.filter_ptr[a + 1] - w.filter_ptr[a], lb = w.filter_ptr[b + 1] - w.filter_ptr[b];
    if (la != lb) return la > lb;  // longer (more work) filters first
    for (int32_t i = 0; i < la; ++i) {
      const int64_t ka = key(order[w.filter_ptr[a] + i]), kb = key(order[w.filter_ptr[b] + i]);
      if (ka != kb) return ka < kb;
    }
    return false;
  };
  auto same_list = [&](int32_t a, int32_t b) { return !less_list(a, b) && !less_list(b, a); };
  std::vector<int32_t> filters(static_cast<size_t>(cout));
  std::iota(filters.begin(), filters.end(), 0);
  std::stable_sort(filters.begin(), filters.end(), less_list);

  p.out_order.reserve(static_cast<size_t>(cout));
  p.values.reserve(static_cast<size_t>(w.nnz * E));
  p.work_prefix.push_back(0);
  for (int64_t i = 0; i < cout;) {
    int64_t end = i + 1;
    while (end < cout && end - i < kPlanMaxGroup && same_list(filters[i], filters[end])) ++end;
    PlanGroup g;
    g.out_begin = static_cast<int32_t>(p.out_order.size());
    g.size = static_cast<int32_t>(end - i);
    g.run_begin = static_cast<int32_t>(p.run_channel.size());
    g.value_offset = static_cast<int64_t>(p.values.size());
    const int32_t lead = filters[i];
    const int32_t runs = w.filter_ptr[lead + 1] - w.filter_ptr[lead];
    for (int32_t r = 0; r < runs; ++r) {
      const int32_t k = order[w.filter_ptr[lead] + r];
      p.run_channel.push_back(w.kernel_channel[k]);
      p.run_pattern.push_back(w.kernel_pattern[k]);
      for (int64_t e = 0; e < E; ++e)
        for (int64_t m = i; m < end; ++m)
          p.values.push_back(w.values[static_cast<int64_t>(order[w.filter_ptr[filters[m]] + r]) * E + e]);
    }
    g.run_end = static_cast<int32_t>(p.run_channel.size());
    for (int64_t m = i; m < end; ++m) p.out_order.push_back(filters[m]);
    p.groups.push_back(g);
    p.work_prefix.push_back(p.work_prefix.back() + static_cast<int64_t>(runs + 1) * g.size);
    i = end;
  }
  return plan;
}

namespace {

inline int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

constexpr int64_t kSlabBudgetFloats = 96 * 1024;  // ~384 KB: the slab stays in L2 while every group reads it
constexpr int64_t kMaxVecLen = 16;

// Slab geometry of one call (see plan.h).
struct Geometry {
  int64_t qy_min, qy_max, qx_min, qx_max;  // tap offsets in units of the stride, over dy, dx = 0..2
  int64_t planes, pitch, block_rows, num_blocks, plane_rows, plane_size, channel_stride;
};

Geometry make_geometry(const ConvShape& s) {
  Geometry g;
  g.qy_min = floor_div(-s.pad_h, s.stride_h);
  g.qy_max = floor_div(2 * s.dil_h - s.pad_h, s.stride_h);
  g.qx_min = floor_div(-s.pad_w, s.stride_w);
  g.qx_max = floor_div(2 * s.dil_w - s.pad_w, s.stride_w);
  g.planes = s.stride_h * s.stride_w;
  g.pitch = s.out_w + (g.qx_max - g.qx_min);
  const int64_t halo = g.qy_max - g.qy_min + 1;
  const int64_t per_row = std::max<int64_t>(1, s.in_channels * g.planes * g.pitch);
  int64_t rows = std::clamp<int64_t>(kSlabBudgetFloats / per_row - halo, 1, s.out_h);
  g.num_blocks = (s.out_h + rows - 1) / rows;
  g.block_rows = (s.out_h + g.num_blocks - 1) / g.num_blocks;
  g.plane_rows = g.block_rows + halo;
  g.plane_size = (g.plane_rows * g.pitch + kMaxVecLen + 15) / 16 * 16;
  g.channel_stride = g.planes * g.plane_size;
  return g;
}

// Fills the slab of output rows [row0, row0 + block_rows) of image `x` (all channels).
void build_slab(const ConvShape& s, const Geometry& g, const float* x, int64_t row0, float* slab) {
  const int64_t in_plane = s.in_h * s.in_w;
  for (int64_t c = 0; c < s.in_channels; ++c) {
    const float* xc = x + c * in_plane;
    for (int64_t a = 0; a < s.stride_h; ++a) {
      for (int64_t b = 0; b < s.stride_w; ++b) {
        float* plane = slab + c * g.channel_stride + (a * s.stride_w + b) * g.plane_size;
        for (int64_t rr = 0; rr < g.plane_rows; ++rr) {
          float* dst = plane + rr * g.pitch;
          const int64_t ih = (row0 + rr + g.qy_min) * s.stride_h + a;
          if (ih < 0 || ih >= s.in_h) { std::memset(dst, 0, sizeof(float) * g.pitch); continue; }
          const float* src = xc + ih * s.in_w;
          if (s.stride_w == 1) {
            // iw = cc + qx_min: zeros left of column 0 and right of in_w - 1, a copy in between.
            const int64_t lo = std::clamp<int64_t>(-g.qx_min, 0, g.pitch);
            const int64_t hi = std::clamp<int64_t>(s.in_w - g.qx_min, lo, g.pitch);
            if (lo > 0) std::memset(dst, 0, sizeof(float) * lo);
            if (hi > lo) std::memcpy(dst + lo, src + lo + g.qx_min, sizeof(float) * (hi - lo));
            if (g.pitch > hi) std::memset(dst + hi, 0, sizeof(float) * (g.pitch - hi));
          } else {
            for (int64_t cc = 0; cc < g.pitch; ++cc) {
              const int64_t iw = (cc + g.qx_min) * s.stride_w + b;
              dst[cc] = (iw >= 0 && iw < s.in_w) ? src[iw] : 0.f;
            }
          }
        }
        std::memset(plane + g.plane_rows * g.pitch, 0, sizeof(float) * (g.plane_size - g.plane_rows * g.pitch));
      }
    }
  }
}

// 64-byte aligned, grow-only per-thread scratch.
float* thread_scratch(int64_t floats) {
  thread_local std::vector<float> buf;
  if (static_cast<int64_t>(buf.size()) < floats + 16) buf.resize(static_cast<size_t>(floats + 16));
  auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((addr + 63) & ~uintptr_t(63));
}

}  // namespace

void plan_forward(const ExecPlan& plan, const MicroKernels& mk, const ConvShape& s, const float* input,
                  const float* bias, float* output, const ParallelFor& pfor, int num_threads) {
  if (s.batch == 0 || s.out_channels == 0 || s.out_h == 0 || s.out_w == 0) return;
  if (plan.out_channels != s.out_channels || plan.in_channels != s.in_channels)
    throw std::invalid_argument("plan_forward: plan was built for another layer shape");
  const Geometry g = make_geometry(s);
  const int64_t E = plan.entries, VL = mk.vec_len;
  if (VL < 1 || VL > kMaxVecLen) throw std::invalid_argument("plan_forward: bad micro-kernel vector length");
  for (int G = 1; G <= kPlanMaxGroup; ++G) {
    if (mk.max_vecs[G] < 1 || mk.max_vecs[G] > kPlanMaxVecs) throw std::invalid_argument("plan_forward: bad micro-kernel table");
    for (int V = 1; V <= mk.max_vecs[G]; ++V)
      if (!mk.fn[G][V]) throw std::invalid_argument("plan_forward: micro-kernel table has a hole");
  }

  // Tap offsets inside one channel's slab, per (pattern, entry).
  std::vector<int32_t> tap_off(static_cast<size_t>(plan.num_patterns * E));
  for (int64_t k = 0; k < plan.num_patterns * E; ++k) {
    const int64_t dy = plan.patterns[k] / 3, dx = plan.patterns[k] % 3;
    const int64_t ty = dy * s.dil_h - s.pad_h, tx = dx * s.dil_w - s.pad_w;
    const int64_t qy = floor_div(ty, s.stride_h), a = ty - qy * s.stride_h;
    const int64_t qx = floor_div(tx, s.stride_w), b = tx - qx * s.stride_w;
    tap_off[k] = static_cast<int32_t>((a * s.stride_w + b) * g.plane_size + (qy - g.qy_min) * g.pitch + (qx - g.qx_min));
  }

  // Tasks: (image, row block, chunk of groups). Chunks only when images x blocks are too few to
  // keep every thread busy; chunks hold equal work (kept kernels x group size).
  const int64_t ngroups = static_cast<int64_t>(plan.groups.size());
  const int64_t outer = s.batch * g.num_blocks;
  int64_t chunks = 1;
  if (num_threads > 1 && outer < 4 * num_threads)
    chunks = std::clamp<int64_t>((4 * num_threads + outer - 1) / outer, 1, std::max<int64_t>(1, ngroups));
  std::vector<int64_t> chunk_begin(static_cast<size_t>(chunks + 1), ngroups);
  const int64_t total = plan.work_prefix.back();
  for (int64_t c = 0; c < chunks; ++c)
    chunk_begin[c] = std::lower_bound(plan.work_prefix.begin(), plan.work_prefix.end() - 1, total * c / chunks) -
                     plan.work_prefix.begin();
  chunk_begin[chunks] = ngroups;

  const int64_t in_image = s.in_channels * s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  const int64_t slab_floats = s.in_channels * g.channel_stride;
  const int64_t stage_stride = kPlanMaxVecs * VL;

  pfor(outer * chunks, 1, [&](int64_t begin, int64_t end) {
    float* slab = thread_scratch(slab_floats + kPlanMaxGroup * stage_stride);
    float* stage = slab + slab_floats;
    float bias_g[kPlanMaxGroup];
    int64_t built = -1;  // (image, block) whose slab is in `slab`
    for (int64_t t = begin; t < end; ++t) {
      const int64_t ob = t / chunks, chunk = t % chunks;
      const int64_t n = ob / g.num_blocks, blk = ob % g.num_blocks;
      const int64_t row0 = blk * g.block_rows;
      const int64_t rows = std::min(g.block_rows, s.out_h - row0);
      if (built != ob) { build_slab(s, g, input + n * in_image, row0, slab); built = ob; }
      const int64_t flat = rows * g.pitch;
      const int64_t nvec = (flat + VL - 1) / VL;
      float* out_img = output + n * s.out_channels * out_plane;
      for (int64_t gi = chunk_begin[chunk]; gi < chunk_begin[chunk + 1]; ++gi) {
        const PlanGroup& grp = plan.groups[gi];
        const int G = grp.size;
        const int32_t* outs = plan.out_order.data() + grp.out_begin;
        for (int m = 0; m < G; ++m) bias_g[m] = bias ? bias[outs[m]] : 0.f;
        TileArgs ta;
        ta.channel_stride = g.channel_stride;
        ta.tap_off = tap_off.data();
        ta.run_channel = plan.run_channel.data() + grp.run_begin;
        ta.run_pattern = plan.run_pattern.data() + grp.run_begin;
        ta.values = plan.values.data() + grp.value_offset;
        ta.runs = grp.run_end - grp.run_begin;
        ta.entries = E;
        ta.bias = bias_g;
        ta.out = stage;
        ta.out_stride = stage_stride;
        const int64_t maxv = mk.max_vecs[G];
        const int64_t ntiles = (nvec + maxv - 1) / maxv;
        const int64_t vper = (nvec + ntiles - 1) / ntiles;  // equal tiles
        for (int64_t v0 = 0; v0 < nvec; v0 += vper) {
          const int64_t V = std::min(vper, nvec - v0);
          const int64_t j0 = v0 * VL;
          ta.src = slab + j0;
          mk.fn[G][V](ta);
          // Scatter the valid columns of the tile into the output rows.
          const int64_t jend = std::min(j0 + V * VL, flat);
          for (int64_t j = j0; j < jend;) {
            const int64_t r = j / g.pitch, col = j % g.pitch;
            const int64_t seg = std::min(g.pitch - col, jend - j);
            const int64_t valid = std::min(seg, s.out_w - col);
            if (valid > 0) {
              const int64_t dst = (row0 + r) * s.out_w + col;
              for (int m = 0; m < G; ++m)
                std::memcpy(out_img + outs[m] * out_plane + dst, stage + m * stage_stride + (j - j0), sizeof(float) * valid);
            }
            j += seg;
          }
        }
      }
    }
  });
}

namespace {

template <int G, int V>
void portable_tile(const TileArgs& t) {
  constexpr int VL = 4, W = V * VL;
  float acc[G][W];
  for (int m = 0; m < G; ++m)
    for (int i = 0; i < W; ++i) acc[m][i] = t.bias ? t.bias[m] : 0.f;
  const float* vals = t.values;
  for (int64_t r = 0; r < t.runs; ++r) {
    const float* base = t.src + t.run_channel[r] * t.channel_stride;
    const int32_t* off = t.tap_off + t.run_pattern[r] * t.entries;
    for (int64_t e = 0; e < t.entries; ++e, vals += G) {
      const float* x = base + off[e];
      for (int m = 0; m < G; ++m)
        for (int i = 0; i < W; ++i) acc[m][i] += vals[m] * x[i];
    }
  }
  for (int m = 0; m < G; ++m)
    for (int i = 0; i < W; ++i) t.out[m * t.out_stride + i] = acc[m][i];
}

template <int G, int... Vs>
void fill_row(MicroKernels& mk, std::integer_sequence<int, Vs...>) {
  ((mk.fn[G][Vs + 1] = &portable_tile<G, Vs + 1>), ...);
  mk.max_vecs[G] = static_cast<int>(sizeof...(Vs));
}

}  // namespace

const MicroKernels& portable_microkernels() {
  static const MicroKernels mk = [] {
    MicroKernels m;
    m.vec_len = 4;
    fill_row<1>(m, std::make_integer_sequence<int, 8>{});
    fill_row<2>(m, std::make_integer_sequence<int, 8>{});
    fill_row<3>(m, std::make_integer_sequence<int, 8>{});
    fill_row<4>(m, std::make_integer_sequence<int, 8>{});
    return m;
  }();
  return mk;
}

}  // namespace patsparse
