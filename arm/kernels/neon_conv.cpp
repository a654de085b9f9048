// aarch64 NEON forward kernel for the pattern-compressed 3x3 convolution (fp32).
//
// Same contract as reference_forward (csrc/kernels/reference.cpp), which it is tested against
// (arm/tests/test_neon.cpp, tests/cpp/test_kernels.cpp, run under qemu by arm/test.sh).
//
// Per call it builds a small execution plan from the compressed arrays (no caching yet):
//   * filter groups: runs of up to 4 consecutive filters with identical (input channel, kept
//     positions) lists, as produced by connectivity/pattern pruning with group=G. One input load
//     then feeds every filter of the group (vfmaq_laneq_f32 against a 4-lane weight vector).
//   * per kernel: its input channel, a 9-bit mask of kept positions, and the weights reordered
//     to row-major position order, interleaved over the group lanes ([position][4 lanes]).
// Each image is first copied into a zero-padded buffer (padding + slack on the right), so the
// inner loops have no bounds checks and may over-read into the slack.
// Register blocking: G filters x B float32x4 vectors (4*B output pixels of one row) of
// accumulators. Stride 1 / dilation 1 (the common case) loads B+1 vectors per kept pattern row
// and derives the kw=1,2 taps with vextq_f32; other strides/dilations load each tap directly
// (stride 2 via vld2q_f32 de-interleave, larger strides lane by lane).
// Work is split over (filter group, output row) tasks through the ParallelFor hook.
#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "neon_kernels.h"

namespace patsparse {
namespace {

constexpr int kMaxGroup = 4;
constexpr int kMaxBlock = 4;  // float32x4 vectors of one output row per tile

struct Plan {
  std::vector<int32_t> group_first;  // first output channel of each group
  std::vector<int32_t> group_size;   // 1..kMaxGroup
  std::vector<int32_t> group_kptr;   // [groups+1] range into the kernel arrays below
  std::vector<int32_t> channel;      // input channel of each kernel
  std::vector<uint16_t> mask;        // kept positions (bit p = position p, row-major)
  std::vector<int32_t> val_off;      // offset (floats) into vals
  std::vector<float> vals;           // per kernel, per kept position in row-major order: 4 lanes
};

uint16_t kernel_mask(const PatternWeights<float>& w, int64_t k) {
  const uint8_t* pat = w.patterns + w.kernel_pattern[k] * w.entries;
  uint16_t m = 0;
  for (int64_t e = 0; e < w.entries; ++e) m |= static_cast<uint16_t>(1u << pat[e]);
  return m;
}

bool same_structure(const PatternWeights<float>& w, int64_t a, int64_t b) {
  const int64_t na = w.filter_ptr[a + 1] - w.filter_ptr[a], nb = w.filter_ptr[b + 1] - w.filter_ptr[b];
  if (na != nb) return false;
  for (int64_t i = 0; i < na; ++i) {
    const int64_t ka = w.filter_ptr[a] + i, kb = w.filter_ptr[b] + i;
    if (w.kernel_channel[ka] != w.kernel_channel[kb] || kernel_mask(w, ka) != kernel_mask(w, kb)) return false;
  }
  return true;
}

Plan build_plan(const PatternWeights<float>& w) {
  Plan p;
  p.group_kptr.push_back(0);
  for (int64_t o = 0; o < w.out_channels;) {
    int g = 1;
    while (g < kMaxGroup && o + g < w.out_channels && same_structure(w, o, o + g)) ++g;
    p.group_first.push_back(static_cast<int32_t>(o));
    p.group_size.push_back(g);
    for (int64_t i = 0; i < w.filter_ptr[o + 1] - w.filter_ptr[o]; ++i) {
      const int64_t k0 = w.filter_ptr[o] + i;
      const uint16_t m = kernel_mask(w, k0);
      p.channel.push_back(w.kernel_channel[k0]);
      p.mask.push_back(m);
      p.val_off.push_back(static_cast<int32_t>(p.vals.size()));
      for (int pos = 0; pos < 9; ++pos) {
        if (!(m & (1u << pos))) continue;
        float lanes[kMaxGroup] = {0.f, 0.f, 0.f, 0.f};
        for (int j = 0; j < g; ++j) {
          // Filter o+j has the same positions but maybe another pattern id / entry order.
          const int64_t kj = w.filter_ptr[o + j] + i;
          const uint8_t* pj = w.patterns + w.kernel_pattern[kj] * w.entries;
          for (int64_t e = 0; e < w.entries; ++e)
            if (pj[e] == pos) lanes[j] = w.values[kj * w.entries + e];
        }
        p.vals.insert(p.vals.end(), lanes, lanes + kMaxGroup);
      }
    }
    p.group_kptr.push_back(static_cast<int32_t>(p.channel.size()));
    o += g;
  }
  return p;
}

template <int G, int B>
inline void fma_tile(float32x4_t (&acc)[G][B], const float32x4_t (&x)[B], float32x4_t wv) {
  for (int b = 0; b < B; ++b) {
    acc[0][b] = vfmaq_laneq_f32(acc[0][b], x[b], wv, 0);
    if constexpr (G > 1) acc[1][b] = vfmaq_laneq_f32(acc[1][b], x[b], wv, 1);
    if constexpr (G > 2) acc[2][b] = vfmaq_laneq_f32(acc[2][b], x[b], wv, 2);
    if constexpr (G > 3) acc[3][b] = vfmaq_laneq_f32(acc[3][b], x[b], wv, 3);
  }
}

struct RowArgs {
  const ConvShape* s;
  const Plan* plan;
  const float* xpad;      // padded image [Cin][hp][wp]
  int64_t hp, wp;
  const float* bias;
  float* out;             // output of this image [Cout][OH][OW]
};

// One output row `oh` of one filter group: G filters, tiles of 4*B pixels.
template <int G, int B>
void group_row(const RowArgs& a, int64_t group, int64_t oh) {
  const ConvShape& s = *a.s;
  const Plan& p = *a.plan;
  const int64_t o0 = p.group_first[group];
  const int32_t k_begin = p.group_kptr[group], k_end = p.group_kptr[group + 1];
  const int64_t plane = a.hp * a.wp;
  const int64_t sw = s.stride_w, dw = s.dil_w, dh_off = s.dil_h * a.wp;
  const bool fast = sw == 1 && dw == 1;
  float* orow[G];
  float32x4_t init[G];
  for (int g = 0; g < G; ++g) {
    orow[g] = a.out + ((o0 + g) * s.out_h + oh) * s.out_w;
    init[g] = vdupq_n_f32(a.bias ? a.bias[o0 + g] : 0.f);
  }
  const float* row0 = a.xpad + oh * s.stride_h * a.wp;
  for (int64_t ow0 = 0; ow0 < s.out_w; ow0 += 4 * B) {
    float32x4_t acc[G][B];
    for (int g = 0; g < G; ++g)
      for (int b = 0; b < B; ++b) acc[g][b] = init[g];
    const float* col0 = row0 + ow0 * sw;
    for (int32_t k = k_begin; k < k_end; ++k) {
      const float* base = col0 + p.channel[k] * plane;
      const float* v = p.vals.data() + p.val_off[k];
      const unsigned m = p.mask[k];
      if (fast) {
        for (int r = 0; r < 3; ++r) {
          const unsigned rm = (m >> (3 * r)) & 7u;
          if (!rm) continue;
          const float* src = base + r * dh_off;
          float32x4_t x[B + 1];
          for (int b = 0; b <= B; ++b) x[b] = vld1q_f32(src + 4 * b);
          if (rm & 1u) {
            float32x4_t t[B];
            for (int b = 0; b < B; ++b) t[b] = x[b];
            fma_tile<G, B>(acc, t, vld1q_f32(v));
            v += 4;
          }
          if (rm & 2u) {
            float32x4_t t[B];
            for (int b = 0; b < B; ++b) t[b] = vextq_f32(x[b], x[b + 1], 1);
            fma_tile<G, B>(acc, t, vld1q_f32(v));
            v += 4;
          }
          if (rm & 4u) {
            float32x4_t t[B];
            for (int b = 0; b < B; ++b) t[b] = vextq_f32(x[b], x[b + 1], 2);
            fma_tile<G, B>(acc, t, vld1q_f32(v));
            v += 4;
          }
        }
      } else {
        for (int pos = 0; pos < 9; ++pos) {
          if (!(m & (1u << pos))) continue;
          const float* src = base + (pos / 3) * dh_off + (pos % 3) * dw;
          float32x4_t t[B];
          if (sw == 1) {
            for (int b = 0; b < B; ++b) t[b] = vld1q_f32(src + 4 * b);
          } else if (sw == 2) {
            for (int b = 0; b < B; ++b) t[b] = vld2q_f32(src + 8 * b).val[0];
          } else {
            for (int b = 0; b < B; ++b) {
              const float* q = src + 4 * b * sw;
              float lanes[4] = {q[0], q[sw], q[2 * sw], q[3 * sw]};
              t[b] = vld1q_f32(lanes);
            }
          }
          fma_tile<G, B>(acc, t, vld1q_f32(v));
          v += 4;
        }
      }
    }
    const int64_t n_valid = std::min<int64_t>(4 * B, s.out_w - ow0);
    for (int g = 0; g < G; ++g) {
      if (n_valid == 4 * B) {
        for (int b = 0; b < B; ++b) vst1q_f32(orow[g] + ow0 + 4 * b, acc[g][b]);
      } else {
        float tmp[4 * B];
        for (int b = 0; b < B; ++b) vst1q_f32(tmp + 4 * b, acc[g][b]);
        std::memcpy(orow[g] + ow0, tmp, n_valid * sizeof(float));
      }
    }
  }
}

template <int B>
void group_row_b(const RowArgs& a, int64_t group, int64_t oh) {
  switch (a.plan->group_size[group]) {
    case 1: group_row<1, B>(a, group, oh); break;
    case 2: group_row<2, B>(a, group, oh); break;
    case 3: group_row<3, B>(a, group, oh); break;
    default: group_row<4, B>(a, group, oh); break;
  }
}

}  // namespace

void neon_forward(const ConvShape& s, const PatternWeights<float>& w, const float* input, const float* bias,
                  float* output, const ParallelFor& pfor) {
  const int64_t out_plane = s.out_h * s.out_w;
  if (s.batch == 0 || s.out_channels == 0 || out_plane == 0) return;
  const Plan plan = build_plan(w);
  const int64_t groups = static_cast<int64_t>(plan.group_first.size());
  // Padded image: rows of wp floats, wide enough for every (over-)read of the widest tile.
  const int64_t tiles_w = (s.out_w + 4 * kMaxBlock - 1) / (4 * kMaxBlock) * (4 * kMaxBlock);
  const int64_t hp = s.in_h + 2 * s.pad_h;
  const int64_t wp = std::max(s.in_w + 2 * s.pad_w, tiles_w * s.stride_w + 2 * s.dil_w + 8);
  std::vector<float> xpad(static_cast<size_t>(s.in_channels * hp * wp));
  // Wide tiles for few filters per group, narrow ones for 4-filter groups (register budget:
  // G*B accumulators + B+1 input vectors + temporaries out of 32 NEON registers).
  const bool wide = s.out_w >= 16;
  const int64_t in_plane = s.in_h * s.in_w;
  for (int64_t n = 0; n < s.batch; ++n) {
    const float* x = input + n * s.in_channels * in_plane;
    pfor(s.in_channels, 1, [&](int64_t c0, int64_t c1) {
      for (int64_t c = c0; c < c1; ++c) {
        float* dst = xpad.data() + c * hp * wp;
        std::fill(dst, dst + hp * wp, 0.f);
        for (int64_t h = 0; h < s.in_h; ++h)
          std::memcpy(dst + (h + s.pad_h) * wp + s.pad_w, x + c * in_plane + h * s.in_w, s.in_w * sizeof(float));
      }
    });
    RowArgs a{&s, &plan, xpad.data(), hp, wp, bias, output + n * s.out_channels * out_plane};
    pfor(groups * s.out_h, 1, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const int64_t group = t / s.out_h, oh = t % s.out_h;
        if (wide && plan.group_size[group] <= 2) group_row_b<4>(a, group, oh);
        else group_row_b<2>(a, group, oh);
      }
    });
  }
}

}  // namespace patsparse
