// Torch-free tests of the fp32 backward (csrc/kernels/backward.h): grad_input (transposed plan,
// zero-spread grad_output at stride > 1) and grad_values (slab dot products) on every ISA path this
// machine runs, pinned to a naive dense double computation over a shape matrix (odd and tiny sizes,
// stride 1/2/3 and rectangular, padding 0..3, dilation 1/2, groups 1..4, empty filters, batch 0);
// results bit-identical between a serial run and a 3-thread run; the transposed plan cache hits by
// forward-plan identity and reads values at call time; padding > 2 * dilation falls back correctly.
#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "csrc/kernels/backward.h"
#include "csrc/kernels/dispatch.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using namespace patsparse_test;

namespace {

std::vector<double> dense_grad_input(const ConvShape& s, const std::vector<double>& wd, const float* gout) {
  std::vector<double> gin(static_cast<size_t>(s.batch * s.in_channels * s.in_h * s.in_w), 0.0);
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t o = 0; o < s.out_channels; ++o)
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          const double g = gout[((n * s.out_channels + o) * s.out_h + oh) * s.out_w + ow];
          for (int64_t c = 0; c < s.in_channels; ++c)
            for (int64_t kh = 0; kh < 3; ++kh)
              for (int64_t kw = 0; kw < 3; ++kw) {
                const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
                const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
                if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
                gin[((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw] +=
                    wd[(o * s.in_channels + c) * 9 + kh * 3 + kw] * g;
              }
        }
  return gin;
}

std::vector<double> dense_grad_values(const ConvShape& s, const Compressed& w, const float* x, const float* gout) {
  std::vector<double> gv(w.values.size(), 0.0);
  for (int64_t o = 0; o < s.out_channels; ++o)
    for (int32_t k = w.filter_ptr[o]; k < w.filter_ptr[o + 1]; ++k) {
      const int64_t c = w.kernel_channel[k];
      for (int64_t e = 0; e < w.entries; ++e) {
        const int pos = w.patterns[w.kernel_pattern[k] * w.entries + e], kh = pos / 3, kw = pos % 3;
        double acc = 0.0;
        for (int64_t n = 0; n < s.batch; ++n)
          for (int64_t oh = 0; oh < s.out_h; ++oh)
            for (int64_t ow = 0; ow < s.out_w; ++ow) {
              const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
              const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
              if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
              acc += static_cast<double>(gout[((n * s.out_channels + o) * s.out_h + oh) * s.out_w + ow]) *
                     x[((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw];
            }
        gv[k * w.entries + e] = acc;
      }
    }
  return gv;
}

struct Case {
  int64_t n, cin, h, w, cout, sh, sw, ph, pw, dh, dw;
  double keep;
  int64_t group;
};

ConvShape shape_of(const Case& c) {
  ConvShape s;
  s.batch = c.n; s.in_channels = c.cin; s.in_h = c.h; s.in_w = c.w; s.out_channels = c.cout;
  s.stride_h = c.sh; s.stride_w = c.sw; s.pad_h = c.ph; s.pad_w = c.pw; s.dil_h = c.dh; s.dil_w = c.dw;
  s.out_h = conv_out_size(c.h, c.ph, c.dh, c.sh);
  s.out_w = conv_out_size(c.w, c.pw, c.dw, c.sw);
  return s;
}

void shape_matrix(Counter& t) {
  const Case cases[] = {
      {2, 8, 9, 11, 12, 1, 1, 1, 1, 1, 1, 0.5, 4},
      {1, 16, 14, 14, 16, 1, 1, 1, 1, 1, 1, 0.25, 1},
      {2, 12, 13, 10, 9, 2, 2, 1, 1, 1, 1, 0.6, 3},
      {1, 6, 8, 9, 10, 2, 2, 0, 0, 1, 1, 0.7, 2},
      {2, 5, 11, 12, 7, 1, 1, 2, 2, 2, 2, 0.8, 1},
      {1, 7, 15, 13, 8, 2, 2, 2, 2, 2, 2, 0.6, 4},
      {1, 4, 9, 10, 5, 3, 3, 2, 2, 1, 1, 0.8, 1},
      {1, 5, 12, 9, 6, 2, 1, 1, 2, 1, 2, 0.9, 2},
      {3, 3, 3, 3, 2, 1, 1, 0, 0, 1, 1, 1.0, 1},   // 1x1 output
      {1, 3, 1, 1, 4, 1, 1, 1, 1, 1, 1, 1.0, 2},   // 1x1 input
      {1, 3, 1, 2, 4, 2, 2, 1, 1, 1, 1, 1.0, 1},
      {2, 4, 7, 7, 6, 1, 1, 3, 3, 1, 1, 0.9, 1},   // padding > 2 * dilation: reference grad_input
      {1, 3, 6, 6, 5, 1, 1, 1, 1, 1, 1, 0.0, 1},   // no kernels at all
      {0, 4, 6, 6, 5, 1, 1, 1, 1, 1, 1, 0.5, 1},   // empty batch
      {1, 200, 12, 12, 9, 1, 1, 1, 1, 1, 1, 0.3, 4},  // several row blocks
      {2, 6, 33, 40, 5, 2, 2, 1, 1, 1, 1, 0.5, 1},
      {2, 512, 40, 37, 4, 1, 1, 1, 1, 1, 1, 0.1, 2},   // several grad_values row blocks
      {1, 300, 61, 50, 3, 2, 2, 1, 1, 1, 1, 0.1, 1},   // same, stride 2
      {20, 200, 9, 9, 3, 1, 1, 1, 1, 1, 1, 0.1, 1},    // images folded into grad_values tiles, 2 steps
      {1, 3, 17, 16, 4, 5, 5, 1, 1, 1, 1, 1.0, 1},     // 25 phases: zero-spread grad_input
      {2, 4, 13, 14, 5, 4, 2, 2, 1, 1, 2, 0.9, 3},     // 8 phases, rectangular
  };
  uint64_t seed = 100;
  for (const Case& c : cases) {
    ++seed;
    const ConvShape s = shape_of(c);
    Compressed w = random_weights(c.cout, c.cin, c.keep, c.group, seed);
    const auto x = random_input(s.batch * s.in_channels * s.in_h * s.in_w, seed + 1);
    const auto gout = random_input(s.batch * s.out_channels * s.out_h * s.out_w, seed + 2);
    const auto want_gin = dense_grad_input(s, w.dense, gout.data());
    const auto want_gv = dense_grad_values(s, w, x.data(), gout.data());
    char name[160];
    std::snprintf(name, sizeof(name), "n%lld cin%lld %lldx%lld cout%lld s%lldx%lld p%lldx%lld d%lldx%lld g%lld",
                  (long long)c.n, (long long)c.cin, (long long)c.h, (long long)c.w, (long long)c.cout, (long long)c.sh,
                  (long long)c.sw, (long long)c.ph, (long long)c.pw, (long long)c.dh, (long long)c.dw, (long long)c.group);
    // The portable tables (what generic builds run) straight through the plan drivers.
    if (plan_supports(s)) {
      const auto plan = build_plan(w.view(), s.in_channels);
      std::vector<float> gv(want_gv.size(), NAN);
      plan_grad_values(*plan, portable_grad_value_kernels(), s, x.data(), gout.data(), gv.data(), threaded_for, 3);
      t.check(tolerance_ratio(gv, want_gv, 1e-4, 1e-3) <= 1.0, std::string("grad_values portable ") + name);
      if (plan_grad_input_supports(s)) {
        std::vector<float> gin(want_gin.size(), NAN);
        plan_grad_input(*build_transposed_plan(plan), portable_microkernels(), s, w.values.data(), gout.data(),
                        gin.data(), threaded_for, 3);
        t.check(tolerance_ratio(gin, want_gin, 1e-4, 1e-4) <= 1.0, std::string("grad_input portable ") + name);
      }
    }
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      std::vector<float> gin1(want_gin.size(), NAN), gin3(want_gin.size(), NAN);
      std::vector<float> gv1(want_gv.size(), NAN), gv3(want_gv.size(), NAN);
      grad_input_f32(isa, s, w.view(), nullptr, gout.data(), gin1.data(), serial_for, 1);
      grad_input_f32(isa, s, w.view(), nullptr, gout.data(), gin3.data(), threaded_for, 3);
      grad_values_f32(isa, s, w.view(), nullptr, x.data(), gout.data(), gv1.data(), serial_for, 1);
      grad_values_f32(isa, s, w.view(), nullptr, x.data(), gout.data(), gv3.data(), threaded_for, 3);
      const std::string tag = std::string(name) + " on " + isa_name(isa);
      t.check(tolerance_ratio(gin1, want_gin, 1e-4, 1e-4) <= 1.0, "grad_input " + tag);
      t.check(tolerance_ratio(gv1, want_gv, 1e-4, 1e-3) <= 1.0, "grad_values " + tag);
      t.check(gin1.empty() || std::memcmp(gin1.data(), gin3.data(), 4 * gin1.size()) == 0,
              "grad_input threads 1/3 identical " + tag);
      t.check(gv1.empty() || std::memcmp(gv1.data(), gv3.data(), 4 * gv1.size()) == 0,
              "grad_values threads 1/3 identical " + tag);
    }
  }
}

void transposed_cache(Counter& t) {
  Compressed w = random_weights(12, 10, 0.6, 4, 7);
  const ConvShape s = make_shape(2, 10, 9, 11, 12, 1, 1, 1);
  const auto gout = random_input(s.batch * s.out_channels * s.out_h * s.out_w, 8);
  PlanCache plans(4);
  TransposedPlanCache cache(2);
  auto fwd = plans.get(w.view(), 10);
  auto tp1 = cache.get(fwd);
  auto tp2 = cache.get(plans.get(w.view(), 10));
  t.check(tp1 == tp2, "transposed plan cache hits for the same forward plan");
  t.check(cache.stats().builds == 1 && cache.stats().hits == 1, "transposed plan cache counts one build, one hit");
  const Isa isa = best_isa();
  for (int round = 0; round < 2; ++round) {  // values changed after the plan was built are used
    if (round == 1) {
      for (auto& v : w.values) v = -3.f * v + 0.5f;
      std::fill(w.dense.begin(), w.dense.end(), 0.0);
      for (int64_t o = 0; o < w.cout; ++o)
        for (int32_t k = w.filter_ptr[o]; k < w.filter_ptr[o + 1]; ++k)
          for (int64_t e = 0; e < w.entries; ++e)
            w.dense[(o * w.cin + w.kernel_channel[k]) * 9 + w.patterns[w.kernel_pattern[k] * w.entries + e]] +=
                w.values[k * w.entries + e];
    }
    std::vector<float> gin(static_cast<size_t>(s.batch * s.in_channels * s.in_h * s.in_w), NAN);
    grad_input_f32(isa, s, w.view(), tp1.get(), gout.data(), gin.data());
    t.check(tolerance_ratio(gin, dense_grad_input(s, w.dense, gout.data()), 1e-4, 1e-4) <= 1.0,
            round ? "cached transposed plan uses values changed after it was built" : "cached transposed plan");
  }
  // Different index arrays: a different forward plan, so a different transposed plan.
  Compressed w2 = random_weights(12, 10, 0.6, 1, 9);
  auto tp3 = cache.get(plans.get(w2.view(), 10));
  t.check(tp3 != tp1 && tp3->forward->nnz == static_cast<int64_t>(w2.kernel_channel.size()),
          "other index arrays get their own transposed plan");
  cache.get(plans.get(random_weights(12, 10, 0.5, 2, 10).view(), 10));
  t.check(cache.stats().size == 2, "transposed plan cache stays bounded");
}

}  // namespace

int main() {
  Counter t;
  shape_matrix(t);
  transposed_cache(t);
  return t.finish("test_backward");
}
