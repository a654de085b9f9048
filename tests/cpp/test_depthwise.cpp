// Torch-free test of the depthwise 3x3 kernel (csrc/kernels/depthwise.h): every ISA path this
// machine runs (and NEON under qemu, arm/test.sh), serial and threaded, over a matrix of shapes
// (widths around the vector lengths, 1-pixel planes, strides 1..3 per axis), with and without bias
// and clamp, against a naive double convolution; NaN propagation; bad shapes must throw.
// Runs under ASan/UBSan in CI (scripts/test_cpp.sh).
#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/kernels/depthwise.h"
#include "csrc/kernels/dispatch.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using patsparse_test::Counter;
using patsparse_test::Rng;

namespace {

// Naive double depthwise conv: padding 1, every tap bounds-checked on its own.
std::vector<double> naive(const DepthwiseShape& s, const std::vector<float>& x, const std::vector<float>& wt,
                          const float* bias, double lo, double hi) {
  const int64_t oh = s.out_h(), ow = s.out_w();
  std::vector<double> y(static_cast<size_t>(s.batch * s.channels * oh * ow));
  for (int64_t p = 0; p < s.batch * s.channels; ++p)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        double acc = bias ? bias[p % s.channels] : 0.0;
        for (int ky = 0; ky < 3; ++ky)
          for (int kx = 0; kx < 3; ++kx) {
            const int64_t iy = oy * s.stride_h - 1 + ky, ix = ox * s.stride_w - 1 + kx;
            if (iy < 0 || iy >= s.h || ix < 0 || ix >= s.w) continue;
            acc += double(wt[(p % s.channels) * 9 + ky * 3 + kx]) * x[(p * s.h + iy) * s.w + ix];
          }
        y[(p * oh + oy) * ow + ox] = std::min(hi, std::max(lo, acc));
      }
  return y;
}

void check_case(Counter& c, Isa isa, const DepthwiseShape& s, bool with_bias, bool clamp, bool threaded,
                uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(s.batch * s.channels * s.h * s.w)), wt(static_cast<size_t>(s.channels * 9)),
      bias(static_cast<size_t>(s.channels));
  for (float& v : x) v = static_cast<float>(rng.uniform() * 2 - 1);
  for (float& v : wt) v = static_cast<float>(rng.uniform() * 2 - 1);
  for (float& v : bias) v = static_cast<float>(rng.uniform() - 0.5);
  const float lo = clamp ? 0.f : -std::numeric_limits<float>::infinity();
  const float hi = clamp ? 0.5f : std::numeric_limits<float>::infinity();
  const size_t out_size = static_cast<size_t>(s.batch * s.channels * s.out_h() * s.out_w());
  std::vector<float> y(out_size + 1, 12345.f);  // one sentinel past the end
  DepthwiseIo<float> io;
  io.x = x.data();
  io.y = y.data();
  io.weight = wt.data();
  io.bias = with_bias ? bias.data() : nullptr;
  io.lo = lo;
  io.hi = hi;
  if (threaded) depthwise3x3_f32(isa, s, io, patsparse_test::threaded_for, 3);
  else depthwise3x3_f32(isa, s, io);
  const std::vector<double> want = naive(s, x, wt, io.bias, lo, hi);
  double worst = 0;
  for (size_t i = 0; i < out_size; ++i) worst = std::max(worst, std::abs(y[i] - want[i]) / (1e-5 * (1 + std::abs(want[i]))));
  char what[200];
  std::snprintf(what, sizeof what, "%s b%lld c%lld %lldx%lld stride %lldx%lld bias %d clamp %d threads %d",
                isa_name(isa), (long long)s.batch, (long long)s.channels, (long long)s.h, (long long)s.w,
                (long long)s.stride_h, (long long)s.stride_w, with_bias, clamp, threaded);
  c.check(worst <= 1.0 && !std::isnan(worst) && y[out_size] == 12345.f, what);
}

}  // namespace

int main() {
  Counter c;
  const std::vector<Isa> isas = patsparse_test::supported_isas();
  uint64_t seed = 1;
  for (Isa isa : isas) {
    // widths: 1, 2, 3 (no interior), around 4 / 8 / 16 lanes and 4-vector blocks, and larger
    for (int64_t w : {1, 2, 3, 5, 9, 17, 18, 33, 66, 67, 130}) {
      for (int64_t h : {1, 2, 7}) {
        for (int64_t sh : {1, 2, 3}) {
          for (int64_t sw : {1, 2, 3}) {
            DepthwiseShape s;
            s.batch = 2;
            s.channels = 3;
            s.h = h;
            s.w = w;
            s.stride_h = sh;
            s.stride_w = sw;
            check_case(c, isa, s, (w + h) % 2 == 0, sw == 2, false, seed++);
          }
        }
      }
    }
    // batch 0, batch 1 with many channels (threaded row chunks), large planes, wide rows (scratch-bounded row chunks)
    for (auto [b, ch, h, w, st] : std::vector<std::array<int64_t, 5>>{
             {0, 4, 5, 5, 1}, {1, 1, 112, 112, 1}, {1, 2, 5, 40000, 1}, {1, 1, 4, 70000, 2}, {1, 32, 56, 56, 2}, {3, 24, 14, 14, 1}, {1, 96, 7, 7, 2}}) {
      DepthwiseShape s;
      s.batch = b;
      s.channels = ch;
      s.h = h;
      s.w = w;
      s.stride_h = s.stride_w = st;
      for (bool threaded : {false, true}) check_case(c, isa, s, true, true, threaded, seed++);
    }
    // NaN in the input propagates through the clamp on every path
    {
      DepthwiseShape s;
      s.batch = 1, s.channels = 1, s.h = 3, s.w = 40;
      std::vector<float> x(120, 0.f), wt(9, 1.f), y(120, 0.f);
      x[60] = std::numeric_limits<float>::quiet_NaN();  // row 1, column 20
      DepthwiseIo<float> io;
      io.x = x.data(), io.y = y.data(), io.weight = wt.data(), io.lo = 0.f, io.hi = 6.f;
      depthwise3x3_f32(isa, s, io);
      c.check(std::isnan(y[20]) && std::isnan(y[60]) && std::isnan(y[101]) && y[0] == 0.f && y[23] == 0.f,
              std::string("NaN propagates on ") + isa_name(isa));
    }
  }
  // bad shapes throw
  for (auto [b, ch, h, w, sh, sw] : std::vector<std::array<int64_t, 6>>{
           {-1, 1, 1, 1, 1, 1}, {1, 1, 0, 4, 1, 1}, {1, 1, 4, 4, 0, 1}, {1, 1, 4, 4, 1, -2},
           {1, int64_t(1) << 40, int64_t(1) << 20, int64_t(1) << 20, 1, 1}}) {
    DepthwiseShape s;
    s.batch = b, s.channels = ch, s.h = h, s.w = w, s.stride_h = sh, s.stride_w = sw;
    bool threw = false;
    try {
      DepthwiseIo<float> io;
      depthwise3x3_f32(isas.back(), s, io);
    } catch (const std::invalid_argument&) {
      threw = true;
    }
    c.check(threw, "rejects a bad shape");
  }
  return c.finish("test_depthwise");
}
