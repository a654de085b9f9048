// C++ tests of the fused output stage (kernels/epilogue.h) in the pattern conv forward:
//   1. every path (scalar reference, each SIMD path this build and CPU support, the portable
//      micro-kernels through plan_forward) against a naive dense conv in double followed by the
//      epilogue in double, over a shape matrix (stride 1/2, padding 0/1, dilation 1/2, batch
//      0/1/3, group 1/4) x every epilogue kind (scale, shift, residual each on/off; bounds
//      unbounded, ReLU, ReLU6, an asymmetric clamp), serial and threaded, with guard zones;
//   2. forward_f32 rejects lo > hi and NaN bounds on every path; the bias-only overload equals
//      an epilogue with the bias as shift.
// Prints "test_epilogue: N passed, M failed"; exit status 1 on any failure.
#include <limits>

#include "csrc/kernels/dispatch.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using namespace patsparse_test;

namespace {

constexpr float kInf = std::numeric_limits<float>::infinity();

struct Bounds {
  float lo, hi;
  const char* name;
};
const Bounds kBounds[] = {{-kInf, kInf, "none"}, {0.f, kInf, "relu"}, {0.f, 6.f, "relu6"}, {-0.3f, 0.2f, "clamp"}};

// dense conv (no bias) then out = clamp(acc * scale + shift + residual, lo, hi), in double.
std::vector<double> expected(const ConvShape& s, const Compressed& w, const std::vector<float>& x,
                             const float* scale, const float* shift, const float* residual, Bounds b) {
  std::vector<double> out = dense_conv(s, w.dense, x.data(), nullptr);
  const int64_t plane = s.out_h * s.out_w;
  for (size_t i = 0; i < out.size(); ++i) {
    const int64_t c = (static_cast<int64_t>(i) / plane) % s.out_channels;
    double v = out[i] * (scale ? scale[c] : 1.0) + (shift ? shift[c] : 0.0) + (residual ? residual[i] : 0.0);
    out[i] = std::min(std::max(v, double(b.lo)), double(b.hi));
  }
  return out;
}

// Runs `run(output)` into a guarded buffer; checks it against `want` and that nothing outside was written.
template <typename Run>
void check_run(Counter& t, size_t out_n, const std::vector<double>& want, const std::string& what, Run&& run) {
  const size_t guard = 64;
  std::vector<float> buf(out_n + 2 * guard, -12345.f);
  std::fill(buf.begin() + guard, buf.begin() + guard + out_n, NAN);
  run(buf.data() + guard);
  std::vector<float> got(buf.begin() + guard, buf.begin() + guard + out_n);
  bool guards_ok = true;
  for (size_t i = 0; i < guard; ++i) guards_ok &= buf[i] == -12345.f && buf[guard + out_n + i] == -12345.f;
  t.check(tolerance_ratio(got, want, 1e-5, 1e-5) <= 1.0, what);
  t.check(guards_ok, "writes outside the output: " + what);
}

void run_case(Counter& t, const ConvShape& s, const Compressed& w, uint64_t seed, const std::string& name) {
  const size_t out_n = static_cast<size_t>(s.batch * s.out_channels * s.out_h * s.out_w);
  const auto x = random_input(s.batch * s.in_channels * s.in_h * s.in_w, seed);
  const auto scale = random_input(s.out_channels, seed + 1, 0.5, 1.5);
  const auto shift = random_input(s.out_channels, seed + 2);
  const auto residual = random_input(static_cast<int64_t>(out_n), seed + 3, -0.5, 0.5);
  const auto plan = build_plan(w.view(), s.in_channels);
  for (int kind = 0; kind < 8; ++kind) {
    for (const Bounds& b : kBounds) {
      const Epilogue ep = Epilogue::make((kind & 1) ? scale.data() : nullptr, (kind & 2) ? shift.data() : nullptr,
                                         (kind & 4) ? residual.data() : nullptr, b.lo, b.hi);
      const auto want = expected(s, w, x, ep.scale, ep.shift, ep.residual, b);
      const std::string tag = name + " scale=" + std::to_string(kind & 1) + " shift=" + std::to_string((kind >> 1) & 1) +
                              " residual=" + std::to_string((kind >> 2) & 1) + " bounds=" + b.name;
      check_run(t, out_n, want, "reference: " + tag,
                [&](float* out) { reference_forward(s, w.view(), x.data(), ep, out); });
      if (plan_supports(s))
        check_run(t, out_n, want, "portable plan threaded: " + tag, [&](float* out) {
          plan_forward(*plan, portable_microkernels(), s, w.values.data(), x.data(), ep, out, threaded_for, 3);
        });
      for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon}) {
        if (!isa_supported(isa)) continue;
        check_run(t, out_n, want, std::string(isa_name(isa)) + ": " + tag,
                  [&](float* out) { forward_f32(isa, s, w.view(), nullptr, x.data(), ep, out); });
        check_run(t, out_n, want, std::string(isa_name(isa)) + " threaded: " + tag, [&](float* out) {
          forward_f32(isa, s, w.view(), plan.get(), x.data(), ep, out, threaded_for, 3);
        });
      }
    }
  }
}

void shape_matrix(Counter& t) {
  const int64_t hw[][2] = {{7, 9}, {11, 19}, {5, 37}};
  uint64_t seed = 5000;
  int idx = 0;
  for (int64_t stride : {1, 2})
    for (int64_t pad : {0, 1})
      for (int64_t dil : {1, 2})
        for (int64_t batch : {0, 1, 3})
          for (int64_t group : {1, 4}) {
            const int64_t* size = hw[idx++ % 3];
            const ConvShape s = make_shape(batch, 5, size[0], size[1], 9, stride, pad, dil);
            if (s.out_h <= 0 || s.out_w <= 0) continue;
            const Compressed w = random_weights(s.out_channels, s.in_channels, 0.6, group, seed);
            char buf[160];
            std::snprintf(buf, sizeof buf, "N=%lld %lldx%lld stride=%lld pad=%lld dil=%lld group=%lld", (long long)batch,
                          (long long)size[0], (long long)size[1], (long long)stride, (long long)pad, (long long)dil,
                          (long long)group);
            run_case(t, s, w, seed += 7, buf);
          }
}

void bad_bounds(Counter& t) {
  const ConvShape s = make_shape(1, 3, 6, 6, 4, 1, 1, 1);
  const Compressed w = random_weights(4, 3, 0.8, 1, 42);
  const auto x = random_input(3 * 36, 43);
  std::vector<float> out(4 * 36);
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::pair<float, float> bad[] = {{1.f, 0.f}, {nan, 1.f}, {0.f, nan}, {kInf, -kInf}};
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isa_supported(isa)) continue;
    for (const auto& [lo, hi] : bad) {
      Epilogue ep;
      ep.lo = lo;
      ep.hi = hi;
      bool threw = false;
      try { forward_f32(isa, s, w.view(), nullptr, x.data(), ep, out.data()); } catch (const std::invalid_argument&) { threw = true; }
      t.check(threw, std::string("forward_f32 rejects bounds lo=") + std::to_string(lo) + " hi=" + std::to_string(hi) +
                         " on " + isa_name(isa));
    }
    // The bias-only overload is the epilogue with the bias as shift (bit-identical: same path).
    const auto bias = random_input(4, 44);
    std::vector<float> a(out.size()), b(out.size());
    forward_f32(isa, s, w.view(), nullptr, x.data(), bias.data(), a.data());
    forward_f32(isa, s, w.view(), nullptr, x.data(), Epilogue::bias_only(bias.data()), b.data());
    t.check(a == b, std::string("bias overload equals shift-only epilogue on ") + isa_name(isa));
  }
}

}  // namespace

int main() {
  Counter t;
  shape_matrix(t);
  bad_bounds(t);
  return t.finish("test_epilogue");
}
