#include "plan.h"
#include "slab.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <numeric>

namespace patsparse {

std::shared_ptr<const ExecPlan> build_plan(const PatternWeights<float>& w, int64_t in_channels) {
  validate(w, in_channels);
  auto plan = std::make_shared<ExecPlan>();
  ExecPlan& p = *plan;
  p.in_channels = in_channels;
  p.out_channels = w.out_channels;
  p.entries = w.entries;
  p.num_patterns = w.num_patterns;
  p.nnz = w.nnz;
  p.patterns.assign(w.patterns, w.patterns + w.num_patterns * w.entries);
  p.filter_ptr.assign(w.filter_ptr, w.filter_ptr + w.out_channels + 1);
  p.hash = index_hash(w, in_channels);
  const int64_t cout = w.out_channels;

  // Runs follow each filter's CSR order, so every member of a group reads its values sequentially
  // from the caller's array (no copy, no gather). Filters with identical (channel, pattern) lists,
  // in the same order, are gathered (stable: lowest channel first).
  auto key = [&](int32_t k) { return (static_cast<int64_t>(w.kernel_channel[k]) << 8) | w.kernel_pattern[k]; };
  auto less_list = [&](int32_t a, int32_t b) {
    const int32_t la = w.filter_ptr[a + 1] - w.filter_ptr[a], lb = w.filter_ptr[b + 1] - w.filter_ptr[b];
    if (la != lb) return la > lb;  // longer (more work) filters first
    for (int32_t i = 0; i < la; ++i) {
      const int64_t ka = key(w.filter_ptr[a] + i), kb = key(w.filter_ptr[b] + i);
      if (ka != kb) return ka < kb;
    }
    return false;
  };
  auto same_list = [&](int32_t a, int32_t b) { return !less_list(a, b) && !less_list(b, a); };
  std::vector<int32_t> filters(static_cast<size_t>(cout));
  std::iota(filters.begin(), filters.end(), 0);
  std::stable_sort(filters.begin(), filters.end(), less_list);

  p.out_order.reserve(static_cast<size_t>(cout));
  p.work_prefix.push_back(0);
  for (int64_t i = 0; i < cout;) {
    int64_t end = i + 1;
    while (end < cout && end - i < kPlanMaxGroup && same_list(filters[i], filters[end])) ++end;
    PlanGroup g;
    g.out_begin = static_cast<int32_t>(p.out_order.size());
    g.size = static_cast<int32_t>(end - i);
    g.run_begin = static_cast<int32_t>(p.run_channel.size());
    const int32_t lead = filters[i];
    const int32_t runs = w.filter_ptr[lead + 1] - w.filter_ptr[lead];
    for (int32_t r = 0; r < runs; ++r) {
      const int32_t k = w.filter_ptr[lead] + r;
      p.run_channel.push_back(w.kernel_channel[k]);
      p.run_pattern.push_back(w.kernel_pattern[k]);
    }
    g.run_end = static_cast<int32_t>(p.run_channel.size());
    for (int64_t m = i; m < end; ++m) p.out_order.push_back(filters[m]);
    p.groups.push_back(g);
    p.work_prefix.push_back(p.work_prefix.back() + static_cast<int64_t>(runs + 1) * g.size);
    i = end;
  }
  p.bytes = static_cast<int64_t>(sizeof(ExecPlan) + p.patterns.size() + p.run_pattern.size() +
                                 4 * (p.filter_ptr.size() + p.out_order.size() + p.run_channel.size()) +
                                 sizeof(PlanGroup) * p.groups.size() + 8 * p.work_prefix.size());
  return plan;
}

namespace {

// 64-bit multiply-xorshift over 8-byte words: only has to spread equal-shaped weights across the
// cache (a full compare decides every hit).
uint64_t hash_bytes(const void* data, size_t n, uint64_t h) {
  const auto* c = static_cast<const unsigned char*>(data);
  auto mix = [](uint64_t x, uint64_t v) {
    x = (x ^ v) * 0x9E3779B97F4A7C15ull;
    return x ^ (x >> 29);
  };
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint64_t v;
    std::memcpy(&v, c + i, 8);
    h = mix(h, v);
  }
  uint64_t tail = 0;
  if (i < n) std::memcpy(&tail, c + i, n - i);
  return mix(h, tail ^ (static_cast<uint64_t>(n) << 56));
}

template <typename T>
bool same_array(const std::vector<T>& a, const T* b, int64_t n) {
  return static_cast<int64_t>(a.size()) == n && (n == 0 || std::memcmp(a.data(), b, sizeof(T) * n) == 0);
}

}  // namespace

uint64_t index_hash(const PatternWeights<float>& w, int64_t in_channels) {
  const int64_t sizes[5] = {w.num_patterns, w.entries, w.out_channels, w.nnz, in_channels};
  uint64_t h = hash_bytes(sizes, sizeof(sizes), 0x243F6A8885A308D3ull);
  h = hash_bytes(w.patterns, static_cast<size_t>(w.num_patterns * w.entries), h);
  h = hash_bytes(w.filter_ptr, sizeof(int32_t) * static_cast<size_t>(w.out_channels + 1), h);
  h = hash_bytes(w.kernel_channel, sizeof(int32_t) * static_cast<size_t>(w.nnz), h);
  return hash_bytes(w.kernel_pattern, static_cast<size_t>(w.nnz), h);
}

bool plan_matches(const ExecPlan& p, const PatternWeights<float>& w, int64_t in_channels) {
  if (p.in_channels != in_channels || p.num_patterns != w.num_patterns || p.entries != w.entries ||
      p.out_channels != w.out_channels || p.nnz != w.nnz ||
      !same_array(p.patterns, w.patterns, w.num_patterns * w.entries) ||
      !same_array(p.filter_ptr, w.filter_ptr, w.out_channels + 1))
    return false;
  // Equal filter_ptr: every kernel lies in one filter and every filter in one group, whose runs are
  // that filter's CSR row; comparing those covers kernel_channel and kernel_pattern completely
  // (and reads the run arrays the forward reads next).
  for (const PlanGroup& g : p.groups) {
    const size_t runs = static_cast<size_t>(g.run_end - g.run_begin);
    for (int32_t m = 0; m < g.size; ++m) {
      const int32_t k = p.filter_ptr[p.out_order[g.out_begin + m]];
      if (runs && (std::memcmp(w.kernel_channel + k, p.run_channel.data() + g.run_begin, 4 * runs) != 0 ||
                   std::memcmp(w.kernel_pattern + k, p.run_pattern.data() + g.run_begin, runs) != 0))
        return false;
    }
  }
  return true;
}

bool PlanCache::Hint::operator==(const Hint& o) const {
  for (int i = 0; i < 4; ++i)
    if (ptr[i] != o.ptr[i]) return false;
  for (int i = 0; i < 5; ++i)
    if (sizes[i] != o.sizes[i]) return false;
  return true;
}

PlanCache::Hint PlanCache::hint_of(const PatternWeights<float>& w, int64_t in_channels) {
  Hint h;
  h.ptr[0] = w.patterns; h.ptr[1] = w.filter_ptr; h.ptr[2] = w.kernel_channel; h.ptr[3] = w.kernel_pattern;
  h.sizes[0] = w.num_patterns; h.sizes[1] = w.entries; h.sizes[2] = w.out_channels; h.sizes[3] = w.nnz;
  h.sizes[4] = in_channels;
  return h;
}

std::shared_ptr<const ExecPlan> PlanCache::get(const PatternWeights<float>& w, int64_t in_channels) {
  const Hint hint = hint_of(w, in_channels);
  auto here = [&](Entry& e) { e.hint = hint; };
  const auto same_place = cache_.candidates([&](const Entry& e) { return e.hint == hint; });
  const std::shared_ptr<Entry> tried = same_place.empty() ? nullptr : same_place.front();
  if (tried && plan_matches(*tried->plan, w, in_channels)) {
    cache_.hit(tried, here);
    return tried->plan;
  }
  // Moved, copied or changed in place: look the content up by hash.
  const uint64_t h = index_hash(w, in_channels);
  for (const auto& e : cache_.candidates([&](const Entry& e) { return e.plan->hash == h; }))
    if (e != tried && plan_matches(*e->plan, w, in_channels)) {
      cache_.hit(e, here);
      return e->plan;
    }
  std::shared_ptr<const ExecPlan> plan = build_plan(w, in_channels);  // validates every index
  cache_.add(std::make_shared<Entry>(Entry{hint, plan}), plan->bytes);
  return plan;
}

namespace slab {

static_assert(kPlanMaxSlabFloats + kMaxVecLen * kPlanMaxVecs < (int64_t(1) << 31), "tap offsets are int32");

// False when a size overflows or the slab exceeds kPlanMaxSlabFloats. Given check_shape(s), every
// input coordinate a tap reaches lies in [-pad, in + pad), so the tap and row offsets below fit.
bool make_geometry(const ConvShape& s, Geometry* out, int64_t budget_floats) {
  if (!shape_ok(s)) return false;
  Geometry g;
  g.qy_min = floor_div(-s.pad_h, s.stride_h);
  g.qy_max = floor_div(2 * s.dil_h - s.pad_h, s.stride_h);  // 2 * dil fits: checked by check_shape
  g.qx_min = floor_div(-s.pad_w, s.stride_w);
  g.qx_max = floor_div(2 * s.dil_w - s.pad_w, s.stride_w);
  int64_t halo, per_row;
  if (!mul_ok(s.stride_h, s.stride_w, &g.planes) || !add_ok(s.out_w, g.qx_max - g.qx_min, &g.pitch) ||
      !add_ok(g.qy_max - g.qy_min, 1, &halo) || !product_ok({s.in_channels, g.planes, g.pitch}, &per_row))
    return false;
  per_row = std::max<int64_t>(1, per_row);
  const int64_t rows = std::clamp<int64_t>(budget_floats / per_row - halo, 1, std::max<int64_t>(1, s.out_h));
  g.num_blocks = (s.out_h + rows - 1) / rows;
  g.block_rows = g.num_blocks > 0 ? (s.out_h + g.num_blocks - 1) / g.num_blocks : 0;
  int64_t plane_floats;
  if (!add_ok(g.block_rows, halo, &g.plane_rows) || !mul_ok(g.plane_rows, g.pitch, &plane_floats) ||
      plane_floats > kPlanMaxSlabFloats)
    return false;
  g.plane_size = (plane_floats + kMaxVecLen + 15) / 16 * 16;
  if (!mul_ok(g.planes, g.plane_size, &g.channel_stride) || !mul_ok(s.in_channels, g.channel_stride, &g.slab_floats) ||
      g.slab_floats > kPlanMaxSlabFloats || g.channel_stride > kPlanMaxSlabFloats)
    return false;
  *out = g;
  return true;
}

// Fills the slab of output rows [row0, row0 + block_rows) of image `x` (all channels). Each channel's
// planes are zeroed by one memset, then its in-image rows get their in-image columns: per-row zero
// fills of a few padding floats cost more in call overhead than they write. Every input row is read
// once, for all its column phases (stride 2: one even/odd deinterleave instead of one strided pass
// per phase, which dominated stride-2 layers at group 4: benchmarks/results/x86.md).
void build_slab(const ConvShape& s, const Geometry& g, const float* x, int64_t row0, float* slab) {
  const int64_t in_plane = s.in_h * s.in_w, in_h = s.in_h, in_w = s.in_w, sh = s.stride_h, sw = s.stride_w;
  const int64_t pitch = g.pitch, plane_size = g.plane_size;
  // Valid outputs read rows [0, block_rows + qy_max - qy_min); the plane's last row only takes the
  // vectors that run past the block (junk outputs), so it stays zero.
  const int64_t used_rows = g.plane_rows - 1;
  // Column cc of phase b holds iw = (cc + qx_min) * sw + b: inside [0, in_w) for cc in [lo, lo + n[b]).
  // lo is the same for every phase (0 <= b < sw), and n[b] does not grow with b.
  const int64_t lo = std::clamp<int64_t>(-g.qx_min, 0, pitch);
  const int64_t first_iw = (lo + g.qx_min) * sw;  // of phase 0; phase b starts at first_iw + b
  auto count = [&](int64_t b) {
    return std::clamp<int64_t>(floor_div(in_w - 1 - b, sw) - g.qx_min + 1, lo, pitch) - lo;
  };
  const int64_t n0 = count(0), n1 = sw > 1 ? count(1) : 0;
  if (n0 <= 0) {  // no column inside the image: all padding
    std::memset(slab, 0, sizeof(float) * g.slab_floats);
    return;
  }
  for (int64_t c = 0; c < s.in_channels; ++c) {
    float* chan = slab + c * g.channel_stride;
    std::memset(chan, 0, sizeof(float) * g.channel_stride);
    for (int64_t a = 0; a < sh; ++a) {
      // Rows rr with ih = (row0 + rr + qy_min) * sh + a inside [0, in_h).
      const int64_t ih0 = (row0 + g.qy_min) * sh + a;
      const int64_t rr_lo = std::clamp<int64_t>(floor_div(-ih0 + sh - 1, sh), 0, used_rows);
      const int64_t rr_hi = std::clamp<int64_t>(floor_div(in_h - 1 - ih0, sh) + 1, rr_lo, used_rows);
      if (rr_lo == rr_hi) continue;
      const float* src = x + c * in_plane + (ih0 + rr_lo * sh) * in_w + first_iw;
      float* dst = chan + a * sw * plane_size + rr_lo * pitch + lo;  // phase (a, 0); phase (a, b) is b planes on
      for (int64_t rr = rr_lo; rr < rr_hi; ++rr, src += sh * in_w, dst += pitch) {
        if (sw == 1) {
          std::memcpy(dst, src, sizeof(float) * n0);
        } else if (sw == 2) {  // the common strided layer: one deinterleave (vectorises; LD2 on NEON)
          float* __restrict even = dst;
          float* __restrict odd = dst + plane_size;
          const float* __restrict in = src;
          for (int64_t i = 0; i < n1; ++i) {
            even[i] = in[2 * i];
            odd[i] = in[2 * i + 1];
          }
          if (n0 > n1) even[n1] = in[2 * n1];
        } else {
          for (int64_t b = 0; b < sw; ++b) {
            const int64_t nb = count(b);
            for (int64_t i = 0; i < nb; ++i) dst[b * plane_size + i] = src[i * sw + b];
          }
        }
      }
    }
  }
}

// 64-byte aligned per-thread scratch. It grows as needed and is given back when a call needs less
// than a quarter of a buffer over kKeep floats: one very wide input does not leave tens of MiB per
// thread for the life of the process, and the usual slabs (under kKeep) are never reallocated.
float* thread_scratch(int64_t floats) {
  constexpr int64_t kKeep = int64_t(4) << 20;  // 16 MiB
  thread_local std::vector<float> buf;
  const int64_t have = static_cast<int64_t>(buf.size());
  if (have > kKeep && floats + 16 < have / 4) std::vector<float>().swap(buf);
  if (static_cast<int64_t>(buf.size()) < floats + 16) buf.resize(static_cast<size_t>(floats + 16));
  auto addr = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((addr + 63) & ~uintptr_t(63));
}

std::vector<int32_t> tap_offsets(const ExecPlan& plan, const ConvShape& s, const Geometry& g) {
  const int64_t n = plan.num_patterns * plan.entries;
  std::vector<int32_t> tap_off(static_cast<size_t>(n));
  for (int64_t k = 0; k < n; ++k) {
    const int64_t dy = plan.patterns[k] / 3, dx = plan.patterns[k] % 3;
    const int64_t ty = dy * s.dil_h - s.pad_h, tx = dx * s.dil_w - s.pad_w;
    const int64_t qy = floor_div(ty, s.stride_h), a = ty - qy * s.stride_h;
    const int64_t qx = floor_div(tx, s.stride_w), b = tx - qx * s.stride_w;
    tap_off[k] = static_cast<int32_t>((a * s.stride_w + b) * g.plane_size + (qy - g.qy_min) * g.pitch + (qx - g.qx_min));
  }
  return tap_off;
}

}  // namespace slab

using namespace slab;

bool plan_supports(const ConvShape& s) {
  Geometry g;
  return make_geometry(s, &g);
}

std::vector<int64_t> equal_work_chunks(const ExecPlan& plan, int64_t chunks) {
  const int64_t ngroups = static_cast<int64_t>(plan.groups.size());
  std::vector<int64_t> begin(static_cast<size_t>(chunks + 1), ngroups);
  const int64_t total = plan.work_prefix.back();
  for (int64_t c = 0; c < chunks; ++c)
    begin[c] = std::lower_bound(plan.work_prefix.begin(), plan.work_prefix.end() - 1, total * c / chunks) -
               plan.work_prefix.begin();
  return begin;
}

std::string microkernel_name(const char* op, int g, int v, const char* isa) {
  std::string name = std::string("f32_") + op;
  if (g > 0) name += "_g" + std::to_string(g);
  if (v > 0) name += (g > 0 ? "v" : "_v") + std::to_string(v);
  return name + "__" + isa;
}

namespace {
// Vectors per tile for a row of nvec vectors and tiles of at most maxv: the fewest tiles, of equal
// width (the last one takes the remainder).
int64_t tile_vecs(int64_t nvec, int64_t maxv) {
  const int64_t ntiles = (nvec + maxv - 1) / maxv;
  return (nvec + ntiles - 1) / ntiles;
}

// The epilogue over `count` consecutive outputs of channel o (src: the tile, r: residual or null).
void epilogue_row(const Epilogue& ep, int64_t o, const float* src, const float* r, int64_t count, float* dst) {
  const float sc = ep.scale ? ep.scale[o] : 1.f, sh = ep.shift ? ep.shift[o] : 0.f;
  const float lo = ep.lo, hi = ep.hi;
  if (r) {
    for (int64_t i = 0; i < count; ++i) dst[i] = std::min(std::max(src[i] * sc + sh + r[i], lo), hi);
  } else {
    for (int64_t i = 0; i < count; ++i) dst[i] = std::min(std::max(src[i] * sc + sh, lo), hi);
  }
}
}  // namespace

void plan_forward(const ExecPlan& plan, const MicroKernels& mk, const ConvShape& s, const float* values,
                  const float* input, const Epilogue& ep, float* output, const ParallelFor& pfor, int num_threads) {
  Geometry g;
  if (!make_geometry(s, &g)) throw_invalid("plan_forward: shape out of range for the plan path");
  if (s.batch == 0 || s.out_channels == 0 || s.out_h == 0 || s.out_w == 0) return;
  if (plan.out_channels != s.out_channels || plan.in_channels != s.in_channels)
    throw_invalid("plan_forward: plan was built for another layer shape");
  const int64_t E = plan.entries, VL = mk.vec_len;
  if (VL < 1 || VL > kMaxVecLen) throw_invalid("plan_forward: bad micro-kernel vector length");
  for (int G = 1; G <= kPlanMaxGroup; ++G) {
    if (mk.max_vecs[G] < 1 || mk.max_vecs[G] > kPlanMaxVecs) throw_invalid("plan_forward: bad micro-kernel table");
    for (int V = 1; V <= mk.max_vecs[G]; ++V)
      if (!mk.fn[G][V])
        throw_invalid("plan_forward: micro-kernel table has a hole: no " +
                                    microkernel_name("patconv", G, V, mk.isa));
  }

  const std::vector<int32_t> tap_off = tap_offsets(plan, s, g);

  // Tasks: (image, row block, chunk of groups). Chunks only when images x blocks are too few to
  // feed every thread several tasks; chunks hold equal work (kept kernels x group size). Threads
  // take tasks from a shared counter (dynamic balance: a thread slowed by other load on the core
  // takes fewer); every output element is still computed by exactly one task, in a fixed order.
  const int64_t ngroups = static_cast<int64_t>(plan.groups.size());
  const int64_t outer = s.batch * g.num_blocks;
  int64_t chunks = 1;
  if (num_threads > 1 && outer < 8 * num_threads)
    chunks = std::clamp<int64_t>((8 * num_threads + outer - 1) / outer, 1, std::max<int64_t>(1, ngroups));
  const std::vector<int64_t> chunk_begin = equal_work_chunks(plan, chunks);

  // A plain bias starts the accumulators (the tile writes final values); any other epilogue runs on
  // the tile in the copy to the output, while it is still in cache.
  const bool post = !ep.only_shift();
  const float* bias = post ? nullptr : ep.shift;
  const int64_t in_image = s.in_channels * s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  const int64_t slab_floats = g.slab_floats;
  const int64_t stage_stride = kPlanMaxVecs * VL;

  const int64_t ntasks = outer * chunks;
  const int64_t workers = std::clamp<int64_t>(num_threads, 1, ntasks);
  std::atomic<int64_t> next_task{0};
  pfor(workers, 1, [&](int64_t wbegin, int64_t wend) {
    float* slab = thread_scratch(slab_floats + kPlanMaxGroup * stage_stride);
    float* stage = slab + slab_floats;
    float bias_g[kPlanMaxGroup];
    int64_t built = -1;  // (image, block) whose slab is in `slab`
    for (int64_t slot = wbegin; slot < wend; ++slot)
    for (int64_t t = next_task.fetch_add(1); t < ntasks; t = next_task.fetch_add(1)) {
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
        for (int m = 0; m < G; ++m) ta.values[m] = values + static_cast<int64_t>(plan.filter_ptr[outs[m]]) * E;
        ta.runs = grp.run_end - grp.run_begin;
        ta.entries = E;
        ta.bias = bias_g;
        ta.out = stage;
        ta.out_stride = stage_stride;
        const int64_t vper = tile_vecs(nvec, mk.max_vecs[G]);
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
              for (int m = 0; m < G; ++m) {
                const float* tile = stage + m * stage_stride + (j - j0);
                float* out_row = out_img + outs[m] * out_plane + dst;
                if (!post) { std::memcpy(out_row, tile, sizeof(float) * valid); continue; }
                const float* res = ep.residual ? ep.residual + (out_row - output) : nullptr;
                epilogue_row(ep, outs[m], tile, res, valid, out_row);
              }
            }
            j += seg;
          }
        }
      }
    }
  });
}

std::vector<std::string> plan_forward_tiles(const ExecPlan& plan, const MicroKernels& mk, const ConvShape& s) {
  std::vector<std::string> names;
  Geometry g;
  if (!make_geometry(s, &g) || s.batch == 0 || s.out_channels == 0 || s.out_h == 0 || s.out_w == 0 ||
      mk.vec_len < 1)
    return names;
  auto add = [&](int G, int64_t V) {
    std::string n = microkernel_name("patconv", G, static_cast<int>(V), mk.isa);
    if (std::find(names.begin(), names.end(), n) == names.end()) names.push_back(std::move(n));
  };
  // Every block has block_rows rows but the last: those two row counts cover every tile shape.
  for (const int64_t rows : {g.block_rows, s.out_h - (g.num_blocks - 1) * g.block_rows}) {
    const int64_t nvec = (rows * g.pitch + mk.vec_len - 1) / mk.vec_len;
    for (const PlanGroup& grp : plan.groups) {
      if (mk.max_vecs[grp.size] < 1) continue;
      const int64_t vper = tile_vecs(nvec, mk.max_vecs[grp.size]);
      add(grp.size, vper);
      if (nvec % vper) add(grp.size, nvec % vper);
    }
  }
  return names;
}

namespace {

// The portable tile family (plain loops, vec_len 4).
struct PortableTiles {
  template <int G, int V>
  static void tile(const TileArgs& t) {
    constexpr int VL = 4, W = V * VL;
    float acc[G][W];
    for (int m = 0; m < G; ++m)
      for (int i = 0; i < W; ++i) acc[m][i] = t.bias ? t.bias[m] : 0.f;
    for (int64_t r = 0; r < t.runs; ++r) {
      const float* base = t.src + t.run_channel[r] * t.channel_stride;
      const int32_t* off = t.tap_off + t.run_pattern[r] * t.entries;
      const int64_t ne = t.counts ? t.counts[t.run_pattern[r]] : t.entries;
      for (int64_t e = 0; e < ne; ++e) {
        const float* x = base + off[e];
        for (int m = 0; m < G; ++m)
          for (int i = 0; i < W; ++i) acc[m][i] += t.values[m][r * t.entries + e] * x[i];
      }
    }
    for (int m = 0; m < G; ++m)
      for (int i = 0; i < W; ++i) t.out[m * t.out_stride + i] = acc[m][i];
  }
};

constexpr TileList kPortableTiles = {0, 8, 8, 8, 8};

}  // namespace

const MicroKernels& portable_microkernels() {
  static const MicroKernels mk = make_microkernels<PortableTiles, kPortableTiles>("portable", 4, /*counts=*/true);
  return mk;
}

}  // namespace patsparse
