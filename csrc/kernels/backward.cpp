#include "backward.h"

#include <algorithm>
#include <atomic>
#include <cstring>

#include "slab.h"

namespace patsparse {

namespace {

struct PortableSimd {
  struct Vec { float v[4]; };
  static constexpr int width = 4;
  static Vec load(const float* p) { Vec r; for (int i = 0; i < 4; ++i) r.v[i] = p[i]; return r; }
  static Vec set1(float x) { return Vec{{x, x, x, x}}; }
  static Vec fma(Vec a, Vec b, Vec c) { for (int i = 0; i < 4; ++i) c.v[i] += a.v[i] * b.v[i]; return c; }
  static Vec add(Vec a, Vec b) { for (int i = 0; i < 4; ++i) a.v[i] += b.v[i]; return a; }
  static float hsum(Vec a) { return (a.v[0] + a.v[1]) + (a.v[2] + a.v[3]); }
};

}  // namespace
}  // namespace patsparse

#include "grad_tile_impl.h"

namespace patsparse {

using namespace slab;

const GradValueKernels& portable_grad_value_kernels() {
  static const GradValueKernels k = make_grad_value_kernels<PortableSimd, kPlanMaxGroup>("portable");
  return k;
}

std::shared_ptr<const TransposedPlan> build_transposed_plan(const std::shared_ptr<const ExecPlan>& forward) {
  const ExecPlan& f = *forward;
  const int64_t cin = f.in_channels, cout = f.out_channels, nnz = f.nnz;
  auto tp = std::make_shared<TransposedPlan>();
  tp->forward = forward;
  // Each filter's CSR row is its group's runs (plan.h), kernel k = filter_ptr[o] + r.
  std::vector<int32_t> row_begin(static_cast<size_t>(cout), 0);
  for (const PlanGroup& g : f.groups)
    for (int32_t m = 0; m < g.size; ++m) row_begin[f.out_order[g.out_begin + m]] = g.run_begin;
  std::vector<int32_t> ptr(static_cast<size_t>(cin + 1), 0);
  for (int64_t o = 0; o < cout; ++o)
    for (int32_t k = f.filter_ptr[o]; k < f.filter_ptr[o + 1]; ++k)
      ++ptr[f.run_channel[row_begin[o] + (k - f.filter_ptr[o])] + 1];
  for (int64_t c = 0; c < cin; ++c) ptr[c + 1] += ptr[c];
  std::vector<int32_t> fill(ptr.begin(), ptr.end() - 1), channel(static_cast<size_t>(nnz));
  std::vector<uint8_t> pattern(static_cast<size_t>(nnz));
  tp->perm.resize(static_cast<size_t>(nnz));
  for (int64_t o = 0; o < cout; ++o)  // o ascending: each transposed filter streams grad_output forward
    for (int32_t k = f.filter_ptr[o]; k < f.filter_ptr[o + 1]; ++k) {
      const int32_t run = row_begin[o] + (k - f.filter_ptr[o]);
      const int32_t t = fill[f.run_channel[run]]++;
      channel[t] = static_cast<int32_t>(o);
      pattern[t] = f.run_pattern[run];
      tp->perm[t] = k;
    }
  std::vector<uint8_t> flipped(f.patterns.size());
  for (size_t i = 0; i < flipped.size(); ++i) flipped[i] = static_cast<uint8_t>(8 - f.patterns[i]);
  PatternWeights<float> wt;
  wt.num_patterns = f.num_patterns;
  wt.entries = f.entries;
  wt.out_channels = cin;
  wt.nnz = nnz;
  wt.patterns = flipped.data();
  wt.filter_ptr = ptr.data();
  wt.kernel_channel = channel.data();
  wt.kernel_pattern = pattern.data();
  tp->plan = build_plan(wt, cout);
  return tp;
}

std::shared_ptr<const TransposedPlan> TransposedPlanCache::get(const std::shared_ptr<const ExecPlan>& forward) {
  if (auto hit = cache_.find([&](const TransposedPlan& t) { return t.forward == forward; })) return hit;
  auto tp = build_transposed_plan(forward);
  cache_.add(tp, tp->plan->bytes + static_cast<int64_t>(sizeof(int32_t) * tp->perm.size()));
  return tp;
}

namespace {

// The stride-1 forward that computes grad_input: grad_output (spread onto a zero grid when strided:
// in_h + 2 * pad - 2 * dil rows, row oh at oh * stride) convolved with the flipped kernels at padding
// 2 * dil - pad. Its output size is exactly in_h x in_w.
bool transposed_shape(const ConvShape& s, ConvShape* out) {
  if (!shape_ok(s)) return false;
  ConvShape t;
  t.batch = s.batch;
  t.in_channels = s.out_channels;
  t.out_channels = s.in_channels;
  t.pad_h = 2 * s.dil_h - s.pad_h;  // 2 * dil and in + 2 * pad fit: check_shape
  t.pad_w = 2 * s.dil_w - s.pad_w;
  if (t.pad_h < 0 || t.pad_w < 0) return false;  // would need cropping: reference kernel
  t.dil_h = s.dil_h;
  t.dil_w = s.dil_w;
  t.in_h = s.in_h + 2 * s.pad_h - 2 * s.dil_h;
  t.in_w = s.in_w + 2 * s.pad_w - 2 * s.dil_w;
  t.out_h = s.in_h;
  t.out_w = s.in_w;
  if (t.in_h < 1 || t.in_w < 1) return false;
  if (s.stride_h == 1 && s.stride_w == 1 && (t.in_h != s.out_h || t.in_w != s.out_w)) return false;
  if (!shape_ok(t)) return false;
  *out = t;
  return true;
}

}  // namespace

namespace {

// Strided grad_input by output phase: input rows ih = a + stride_h * i (phase a) receive only the taps
// dy with (a + pad_h - dy * dil_h) divisible by stride_h, from grad_output row i + qy, qy = that quotient
// (columns alike). One stride-1, zero-padded slab of grad_output rows serves every phase; a phase is a
// table of tap offsets with per-pattern entry counts (TileArgs::counts), so no multiply meets a zero.
constexpr int64_t kMaxPhases = 16;

struct PhaseGeometry {
  int64_t phases = 0, hmax = 0, wmax = 0;  // phase count; rows / columns of phase 0 (the largest)
  ConvShape slab_shape;                    // what build_slab reads: grad_output as a stride-1 input
  Geometry g;
};

bool make_phase_geometry(const ConvShape& s, PhaseGeometry* out) {
  if (!shape_ok(s) || s.in_h == 0 || s.in_w == 0) return false;
  PhaseGeometry p;
  if (!mul_ok(s.stride_h, s.stride_w, &p.phases) || p.phases > kMaxPhases) return false;
  int64_t q[2][2];  // [axis][min, max] of the tap quotients over every phase
  const int64_t stride[2] = {s.stride_h, s.stride_w}, pad[2] = {s.pad_h, s.pad_w}, dil[2] = {s.dil_h, s.dil_w};
  for (int ax = 0; ax < 2; ++ax) {
    q[ax][0] = 0; q[ax][1] = 0;
    bool any = false;
    for (int64_t a = 0; a < stride[ax]; ++a)
      for (int64_t d = 0; d < 3; ++d) {
        const int64_t t = a + pad[ax] - d * dil[ax];  // pad < 2^62, a < 16, d * dil fits: check_shape
        if (t % stride[ax] != 0) continue;
        const int64_t qq = t / stride[ax];
        q[ax][0] = any ? std::min(q[ax][0], qq) : qq;
        q[ax][1] = any ? std::max(q[ax][1], qq) : qq;
        any = true;
      }
  }
  Geometry& g = p.g;
  g.qy_min = q[0][0]; g.qy_max = q[0][1]; g.qx_min = q[1][0]; g.qx_max = q[1][1];
  p.hmax = (s.in_h + s.stride_h - 1) / s.stride_h;
  p.wmax = (s.in_w + s.stride_w - 1) / s.stride_w;
  g.planes = 1;
  int64_t halo, per_row, span_x;
  if (!sub_ok(g.qx_max, g.qx_min, &span_x) || !add_ok(p.wmax, span_x, &g.pitch) ||
      !sub_ok(g.qy_max, g.qy_min, &halo) || !add_ok(halo, 1, &halo) || !product_ok({s.out_channels, g.pitch}, &per_row))
    return false;
  per_row = std::max<int64_t>(1, per_row);
  const int64_t rows = std::clamp<int64_t>(kSlabBudgetFloats / per_row - halo, 1, p.hmax);
  g.num_blocks = (p.hmax + rows - 1) / rows;
  g.block_rows = (p.hmax + g.num_blocks - 1) / g.num_blocks;
  int64_t plane_floats;
  if (!add_ok(g.block_rows, halo, &g.plane_rows) || !mul_ok(g.plane_rows, g.pitch, &plane_floats) ||
      plane_floats > kPlanMaxSlabFloats)
    return false;
  g.plane_size = (plane_floats + kMaxVecLen + 15) / 16 * 16;
  g.channel_stride = g.plane_size;
  if (!mul_ok(s.out_channels, g.channel_stride, &g.slab_floats) || g.slab_floats > kPlanMaxSlabFloats) return false;
  ConvShape& ss = p.slab_shape;
  ss.batch = s.batch; ss.in_channels = s.out_channels; ss.in_h = s.out_h; ss.in_w = s.out_w;
  ss.stride_h = ss.stride_w = 1;
  *out = p;
  return true;
}

void phase_grad_input(const TransposedPlan& tp, const MicroKernels& mk, const ConvShape& s, const PhaseGeometry& pg,
                      const float* values, const float* grad_output, float* grad_input, const ParallelFor& pfor,
                      int num_threads) {
  const ExecPlan& f = *tp.forward;
  const ExecPlan& plan = *tp.plan;
  const Geometry& g = pg.g;
  const int64_t E = f.entries, K = f.num_patterns, P = pg.phases, VL = mk.vec_len;
  // Per phase: entry counts, tap offsets and entry indices per pattern (kept entries first).
  std::vector<uint8_t> counts(static_cast<size_t>(P * K), 0);
  std::vector<int32_t> tap_off(static_cast<size_t>(P * K * E), 0);
  std::vector<int32_t> entry(static_cast<size_t>(P * K * E), 0);
  for (int64_t ph = 0; ph < P; ++ph) {
    const int64_t a = ph / s.stride_w, b = ph % s.stride_w;
    for (int64_t k = 0; k < K; ++k) {
      int64_t n = 0;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t dy = f.patterns[k * E + e] / 3, dx = f.patterns[k * E + e] % 3;
        const int64_t ty = a + s.pad_h - dy * s.dil_h, tx = b + s.pad_w - dx * s.dil_w;
        if (ty % s.stride_h != 0 || tx % s.stride_w != 0) continue;
        const size_t i = static_cast<size_t>((ph * K + k) * E + n++);
        tap_off[i] = static_cast<int32_t>((ty / s.stride_h - g.qy_min) * g.pitch + (tx / s.stride_w - g.qx_min));
        entry[i] = static_cast<int32_t>(e);
      }
      counts[ph * K + k] = static_cast<uint8_t>(n);
    }
  }
  // Values per phase in the transposed order, kept entries first (read now: they change between calls).
  std::vector<float> vt(static_cast<size_t>(P * f.nnz * E), 0.f);
  for (const PlanGroup& grp : plan.groups)
    for (int32_t m = 0; m < grp.size; ++m) {
      const int32_t c = plan.out_order[grp.out_begin + m];
      for (int32_t r = 0; r < grp.run_end - grp.run_begin; ++r) {
        const int64_t t = plan.filter_ptr[c] + r, k = plan.run_pattern[grp.run_begin + r];
        const float* src = values + static_cast<int64_t>(tp.perm[t]) * E;
        for (int64_t ph = 0; ph < P; ++ph)
          for (int64_t e = 0; e < counts[ph * K + k]; ++e)
            vt[(ph * f.nnz + t) * E + e] = src[entry[(ph * K + k) * E + e]];
      }
    }

  const int64_t ngroups = static_cast<int64_t>(plan.groups.size());
  const int64_t outer = s.batch * g.num_blocks;
  int64_t chunks = 1;
  if (num_threads > 1 && outer < 8 * num_threads)
    chunks = std::clamp<int64_t>((8 * num_threads + outer - 1) / outer, 1, std::max<int64_t>(1, ngroups));
  const std::vector<int64_t> chunk_begin = equal_work_chunks(plan, chunks);

  const int64_t go_image = s.out_channels * s.out_h * s.out_w, in_plane = s.in_h * s.in_w;
  const int64_t stage_stride = kPlanMaxVecs * VL;
  const int64_t ntasks = outer * chunks;
  const int64_t workers = std::clamp<int64_t>(num_threads, 1, ntasks);
  std::atomic<int64_t> next_task{0};
  pfor(workers, 1, [&](int64_t wbegin, int64_t wend) {
    float* slab_buf = thread_scratch(g.slab_floats + kPlanMaxGroup * stage_stride);
    float* stage = slab_buf + g.slab_floats;
    int64_t built = -1;
    for (int64_t slot = wbegin; slot < wend; ++slot)
    for (int64_t t = next_task.fetch_add(1); t < ntasks; t = next_task.fetch_add(1)) {
      const int64_t ob = t / chunks, chunk = t % chunks;
      const int64_t n = ob / g.num_blocks, blk = ob % g.num_blocks;
      const int64_t row0 = blk * g.block_rows;
      if (built != ob) { build_slab(pg.slab_shape, g, grad_output + n * go_image, row0, slab_buf); built = ob; }
      float* gin_img = grad_input + n * s.in_channels * in_plane;
      for (int64_t ph = 0; ph < P; ++ph) {
        const int64_t a = ph / s.stride_w, b = ph % s.stride_w;
        const int64_t hp = (s.in_h - a + s.stride_h - 1) / s.stride_h, wp = (s.in_w - b + s.stride_w - 1) / s.stride_w;
        const int64_t rows = std::min(g.block_rows, hp - row0);
        if (rows <= 0 || wp <= 0) continue;
        const int64_t flat = rows * g.pitch, nvec = (flat + VL - 1) / VL;
        for (int64_t gi = chunk_begin[chunk]; gi < chunk_begin[chunk + 1]; ++gi) {
          const PlanGroup& grp = plan.groups[gi];
          const int G = grp.size;
          const int32_t* outs = plan.out_order.data() + grp.out_begin;
          TileArgs ta;
          ta.channel_stride = g.channel_stride;
          ta.tap_off = tap_off.data() + ph * K * E;
          ta.counts = counts.data() + ph * K;
          ta.run_channel = plan.run_channel.data() + grp.run_begin;
          ta.run_pattern = plan.run_pattern.data() + grp.run_begin;
          for (int m = 0; m < G; ++m)
            ta.values[m] = vt.data() + (ph * f.nnz + static_cast<int64_t>(plan.filter_ptr[outs[m]])) * E;
          ta.runs = grp.run_end - grp.run_begin;
          ta.entries = E;
          ta.out = stage;
          ta.out_stride = stage_stride;
          const int64_t maxv = mk.max_vecs[G];
          const int64_t ntiles = (nvec + maxv - 1) / maxv;
          const int64_t vper = (nvec + ntiles - 1) / ntiles;
          for (int64_t v0 = 0; v0 < nvec; v0 += vper) {
            const int64_t V = std::min(vper, nvec - v0);
            const int64_t j0 = v0 * VL;
            ta.src = slab_buf + j0;
            mk.fn[G][V](ta);
            const int64_t jend = std::min(j0 + V * VL, flat);
            for (int64_t j = j0; j < jend;) {
              const int64_t r = j / g.pitch, col = j % g.pitch;
              const int64_t seg = std::min(g.pitch - col, jend - j);
              const int64_t valid = std::min(seg, wp - col);
              if (valid > 0) {
                const int64_t dst = (a + s.stride_h * (row0 + r)) * s.in_w + b + s.stride_w * col;
                for (int m = 0; m < G; ++m) {
                  float* o = gin_img + outs[m] * in_plane + dst;
                  const float* src = stage + m * stage_stride + (j - j0);
                  for (int64_t i = 0; i < valid; ++i) o[i * s.stride_w] = src[i];
                }
              }
              j += seg;
            }
          }
        }
      }
    }
  });
}

}  // namespace

bool plan_grad_input_supports(const ConvShape& s) {
  ConvShape t;
  return transposed_shape(s, &t) && plan_supports(t);
}

void plan_grad_input(const TransposedPlan& tp, const MicroKernels& mk, const ConvShape& s, const float* values,
                     const float* grad_output, float* grad_input, const ParallelFor& pfor, int num_threads) {
  ConvShape t;
  if (!transposed_shape(s, &t) || !plan_supports(t))
    throw_invalid("plan_grad_input: shape out of range for the plan path");
  const ExecPlan& f = *tp.forward;
  if (f.in_channels != s.in_channels || f.out_channels != s.out_channels)
    throw_invalid("plan_grad_input: plan was built for another layer shape");
  int64_t gin_elems;
  if (!product_ok({s.batch, s.in_channels, s.in_h, s.in_w}, &gin_elems)) throw_invalid("plan_grad_input: size overflow");
  if (gin_elems == 0) return;
  if (s.out_channels == 0 || f.nnz == 0) { std::memset(grad_input, 0, sizeof(float) * gin_elems); return; }

  PhaseGeometry pg;
  if ((s.stride_h > 1 || s.stride_w > 1) && mk.counts && make_phase_geometry(s, &pg)) {
    phase_grad_input(tp, mk, s, pg, values, grad_output, grad_input, pfor, num_threads);
    return;
  }

  // Values in the transposed kernel order (read now: they change between calls).
  const int64_t E = f.entries;
  std::vector<float> vt(static_cast<size_t>(f.nnz * E));
  for (int64_t k = 0; k < f.nnz; ++k)
    std::memcpy(vt.data() + k * E, values + static_cast<int64_t>(tp.perm[k]) * E, sizeof(float) * E);

  const float* src = grad_output;
  std::vector<float> spread;
  if (s.stride_h > 1 || s.stride_w > 1) {
    int64_t n;
    if (!product_ok({t.batch, t.in_channels, t.in_h, t.in_w}, &n)) throw_invalid("plan_grad_input: size overflow");
    spread.assign(static_cast<size_t>(n), 0.f);
    const int64_t planes = s.batch * s.out_channels, up = t.in_h * t.in_w, op = s.out_h * s.out_w;
    pfor(planes, 16, [&](int64_t b, int64_t e) {
      for (int64_t p = b; p < e; ++p)
        for (int64_t oh = 0; oh < s.out_h; ++oh) {
          float* dst = spread.data() + p * up + oh * s.stride_h * t.in_w;
          const float* row = grad_output + p * op + oh * s.out_w;
          for (int64_t ow = 0; ow < s.out_w; ++ow) dst[ow * s.stride_w] = row[ow];
        }
    });
    src = spread.data();
  }
  plan_forward(*tp.plan, mk, t, vt.data(), src, nullptr, grad_input, pfor, num_threads);
}

// Row blocks of grad_values aim at a larger slab than the forward's: each block costs one horizontal
// sum per (kernel, entry), so short blocks (many channels, narrow images) are dominated by them.
// When a whole image is one block, consecutive images are folded into one tile call for the same reason.
constexpr int64_t kGradSlabBudgetFloats = int64_t(512) * 1024;

void plan_grad_values(const ExecPlan& plan, const GradValueKernels& gk, const ConvShape& s, const float* input,
                      const float* grad_output, float* grad_values, const ParallelFor& pfor, int num_threads) {
  Geometry g;
  if (!make_geometry(s, &g)) throw_invalid("plan_grad_values: shape out of range for the plan path");
  if (!make_geometry(s, &g, kGradSlabBudgetFloats)) make_geometry(s, &g);
  if (plan.out_channels != s.out_channels || plan.in_channels != s.in_channels)
    throw_invalid("plan_grad_values: plan was built for another layer shape");
  const int64_t E = plan.entries, VL = gk.vec_len;
  if (VL < 1 || VL > kMaxVecLen) throw_invalid("plan_grad_values: bad kernel vector length");
  for (int G = 1; G <= kPlanMaxGroup; ++G)
    if (!gk.fn[G])
      throw_invalid("plan_grad_values: kernel table has a hole: no " + microkernel_name("patconv_gradv", G, 0, gk.isa));
  std::fill(grad_values, grad_values + plan.nnz * E, 0.f);
  if (s.batch == 0 || s.out_channels == 0 || s.out_h == 0 || s.out_w == 0 || plan.nnz == 0) return;

  const std::vector<int32_t> tap_off = tap_offsets(plan, s, g);
  // Per member and image: the pitched grad_output block, rounded up to whole vectors (zeros past
  // out_w and past the block: those lanes meet junk slab columns, whose products must vanish).
  const int64_t gstride = ((g.block_rows * g.pitch + VL - 1) / VL * VL + 15) / 16 * 16;
  const int64_t fold = g.num_blocks == 1
                           ? std::clamp<int64_t>(kGradSlabBudgetFloats / (g.slab_floats + kPlanMaxGroup * gstride), 1, s.batch)
                           : 1;
  const int64_t steps = g.num_blocks == 1 ? (s.batch + fold - 1) / fold : s.batch * g.num_blocks;

  // Tasks: one chunk of groups of equal work per thread (each chunk rebuilds every slab, so more
  // chunks cost more than the balance they buy); a task walks every step (images, row block) in order.
  const int64_t ngroups = static_cast<int64_t>(plan.groups.size());
  const int64_t chunks = std::clamp<int64_t>(num_threads, 1, std::max<int64_t>(1, ngroups));
  const std::vector<int64_t> chunk_begin = equal_work_chunks(plan, chunks);

  const int64_t in_image = s.in_channels * s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  const int64_t workers = std::clamp<int64_t>(num_threads, 1, chunks);
  std::atomic<int64_t> next_task{0};
  pfor(workers, 1, [&](int64_t wbegin, int64_t wend) {
    // fold slabs, then per member `fold` grad_output blocks; slab_floats and gstride are multiples of 16.
    float* slab_buf = thread_scratch(fold * (g.slab_floats + kPlanMaxGroup * gstride));
    float* gbuf = slab_buf + fold * g.slab_floats;
    for (int64_t slot = wbegin; slot < wend; ++slot)
    for (int64_t chunk = next_task.fetch_add(1); chunk < chunks; chunk = next_task.fetch_add(1)) {
      if (chunk_begin[chunk] == chunk_begin[chunk + 1]) continue;
      for (int64_t step = 0; step < steps; ++step) {
        const int64_t n0 = g.num_blocks == 1 ? step * fold : step / g.num_blocks;
        const int64_t blk = g.num_blocks == 1 ? 0 : step % g.num_blocks;
        const int64_t images = g.num_blocks == 1 ? std::min(fold, s.batch - n0) : 1;
        const int64_t row0 = blk * g.block_rows;
        const int64_t rows = std::min(g.block_rows, s.out_h - row0);
        for (int64_t i = 0; i < images; ++i)
          build_slab(s, g, input + (n0 + i) * in_image, row0, slab_buf + i * g.slab_floats);
        const int64_t flat = rows * g.pitch, nvec = (flat + VL - 1) / VL;
        for (int64_t gi = chunk_begin[chunk]; gi < chunk_begin[chunk + 1]; ++gi) {
          const PlanGroup& grp = plan.groups[gi];
          if (grp.run_end == grp.run_begin) continue;
          const int G = grp.size;
          const int32_t* outs = plan.out_order.data() + grp.out_begin;
          GradTileArgs ga;
          ga.src = slab_buf;
          ga.images = images;
          ga.src_stride = g.slab_floats;
          ga.gout_stride = gstride;
          ga.channel_stride = g.channel_stride;
          ga.tap_off = tap_off.data();
          ga.run_channel = plan.run_channel.data() + grp.run_begin;
          ga.run_pattern = plan.run_pattern.data() + grp.run_begin;
          ga.runs = grp.run_end - grp.run_begin;
          ga.entries = E;
          ga.nvec = nvec;
          for (int m = 0; m < G; ++m) {
            for (int64_t i = 0; i < images; ++i) {
              float* dst = gbuf + (m * fold + i) * gstride;
              const float* src = grad_output + ((n0 + i) * s.out_channels + outs[m]) * out_plane + row0 * s.out_w;
              for (int64_t r = 0; r < rows; ++r) {
                std::memcpy(dst + r * g.pitch, src + r * s.out_w, sizeof(float) * s.out_w);
                std::memset(dst + r * g.pitch + s.out_w, 0, sizeof(float) * (g.pitch - s.out_w));
              }
              std::memset(dst + flat, 0, sizeof(float) * (nvec * VL - flat));
            }
            ga.gout[m] = gbuf + m * fold * gstride;
            ga.grad[m] = grad_values + static_cast<int64_t>(plan.filter_ptr[outs[m]]) * E;
          }
          gk.fn[G](ga);
        }
      }
    }
  });
}

}  // namespace patsparse
