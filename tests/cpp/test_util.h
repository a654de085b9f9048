// Torch-free test utilities for the kernel core: deterministic random pattern weights (built
// directly in the compressed format AND as the dense [Cout, Cin, 3, 3] weight they stand for),
// a naive dense 3x3 convolution in double (the C++ counterpart of tests/helpers.reference_conv),
// tolerance checks and a tiny pass/fail counter. Used by tests/cpp/test_*.cpp and arm/tests/.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "csrc/kernels/dispatch.h"
#include "csrc/kernels/pattern_conv.h"

namespace patsparse_test {

using patsparse::ConvShape;
using patsparse::PatternWeights;

// The kernel paths this build and CPU run (a test forces each in turn).
inline std::vector<patsparse::Isa> supported_isas() {
  std::vector<patsparse::Isa> out;
  for (patsparse::Isa isa : {patsparse::Isa::Scalar, patsparse::Isa::Avx2, patsparse::Isa::Avx512, patsparse::Isa::Neon})
    if (patsparse::isa_supported(isa)) out.push_back(isa);
  return out;
}

// Splits [0, n) into up to 3 chunks run on their own threads (the kernels must write disjoint data).
inline void threaded_for(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& body) {
  if (n <= 0) return;
  const int64_t chunks = std::min<int64_t>(3, std::max<int64_t>(1, n / std::max<int64_t>(grain, 1)));
  std::vector<std::thread> threads;
  for (int64_t t = 0; t < chunks; ++t) {
    const int64_t b = n * t / chunks, e = n * (t + 1) / chunks;
    if (b < e) threads.emplace_back([&body, b, e] { body(b, e); });
  }
  for (auto& th : threads) th.join();
}

// The message of the std::invalid_argument f() throws (the core's error convention), "" when it
// returns normally.
template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}

struct Rng {  // splitmix64: same sequence on every platform
  uint64_t state;
  explicit Rng(uint64_t seed) : state(seed) {}
  uint64_t next() {
    uint64_t z = (state += 0x9E3779B97F4A7C15ull);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
  }
  int64_t below(int64_t n) { return static_cast<int64_t>(next() % static_cast<uint64_t>(n)); }
  double uniform() { return (next() >> 11) * (1.0 / 9007199254740992.0); }  // [0, 1)
};

// The 8 patterns of tests/helpers.PATTERNS8, except that rows 0 and 5 list their positions out of
// order (the format allows any order; values follow the row's order).
inline std::vector<uint8_t> patterns8() {
  return {4, 0, 3, 1,  1, 2, 4, 5,  3, 4, 6, 7,  4, 5, 7, 8,
          1, 3, 4, 5,  7, 5, 4, 1,  3, 4, 5, 7,  1, 3, 4, 7};
}

struct Compressed {
  int64_t cout = 0, cin = 0, entries = 4, num_patterns = 0;
  std::vector<uint8_t> patterns;
  std::vector<int32_t> filter_ptr, kernel_channel;
  std::vector<uint8_t> kernel_pattern;
  std::vector<float> values;
  std::vector<double> dense;  // [Cout, Cin, 9]

  PatternWeights<float> view() const {
    PatternWeights<float> w;
    w.num_patterns = num_patterns; w.entries = entries; w.out_channels = cout;
    w.nnz = static_cast<int64_t>(kernel_channel.size());
    w.patterns = patterns.data(); w.filter_ptr = filter_ptr.data(); w.kernel_channel = kernel_channel.data();
    w.kernel_pattern = kernel_pattern.data(); w.values = values.data();
    return w;
  }
};

// Each kernel kept with probability `keep` on a random pattern; with group=G, G consecutive filters
// share the (channel, pattern) list (the last group may be shorter). Values are int8 codes * scale
// (codes in -127..127, zero codes allowed), so they are exactly representable in float.
// same_mask_alias: in a group, filters other than the first may use pattern row `alias` of a
// pattern with the same positions listed in another order (exercises the kernels' grouping).
inline Compressed random_weights(int64_t cout, int64_t cin, double keep, int64_t group, uint64_t seed,
                                 std::vector<uint8_t> patterns = patterns8(), int64_t entries = 4,
                                 float scale = 0.0123f) {
  Rng rng(seed);
  Compressed c;
  c.cout = cout; c.cin = cin; c.entries = entries; c.patterns = patterns;
  c.num_patterns = static_cast<int64_t>(patterns.size()) / entries;
  c.dense.assign(cout * cin * 9, 0.0);
  c.filter_ptr.push_back(0);
  std::vector<int32_t> chans;
  std::vector<uint8_t> pats;
  for (int64_t o = 0; o < cout; ++o) {
    if (o % group == 0) {  // new structure for this group of filters, sorted by (pattern, channel)
      chans.clear(); pats.clear();
      std::vector<std::pair<int, int>> kp;
      for (int64_t i = 0; i < cin; ++i)
        if (rng.uniform() < keep) kp.emplace_back(static_cast<int>(rng.below(c.num_patterns)), static_cast<int>(i));
      std::sort(kp.begin(), kp.end());
      for (auto [p, i] : kp) { pats.push_back(static_cast<uint8_t>(p)); chans.push_back(i); }
    }
    for (size_t j = 0; j < chans.size(); ++j) {
      c.kernel_channel.push_back(chans[j]);
      c.kernel_pattern.push_back(pats[j]);
      const uint8_t* pat = c.patterns.data() + pats[j] * entries;
      for (int64_t e = 0; e < entries; ++e) {
        const int code = static_cast<int>(rng.below(255)) - 127;
        const float v = static_cast<float>(code) * scale;
        c.values.push_back(v);
        c.dense[(o * cin + chans[j]) * 9 + pat[e]] += v;
      }
    }
    c.filter_ptr.push_back(static_cast<int32_t>(c.kernel_channel.size()));
  }
  return c;
}

inline std::vector<float> random_input(int64_t n, uint64_t seed, double lo = -1.0, double hi = 1.0) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(n));
  for (auto& v : x) v = static_cast<float>(lo + (hi - lo) * rng.uniform());
  return x;
}

inline ConvShape make_shape(int64_t batch, int64_t cin, int64_t h, int64_t w, int64_t cout, int64_t stride,
                            int64_t pad, int64_t dil) {
  ConvShape s;
  s.batch = batch; s.in_channels = cin; s.in_h = h; s.in_w = w; s.out_channels = cout;
  s.stride_h = s.stride_w = stride; s.pad_h = s.pad_w = pad; s.dil_h = s.dil_w = dil;
  s.out_h = patsparse::conv_out_size(h, pad, dil, stride);
  s.out_w = patsparse::conv_out_size(w, pad, dil, stride);
  return s;
}

// Naive dense 3x3 convolution (PyTorch semantics: cross-correlation, zero padding) in double.
inline std::vector<double> dense_conv(const ConvShape& s, const std::vector<double>& weight, const float* input,
                                      const float* bias) {
  std::vector<double> out(static_cast<size_t>(s.batch * s.out_channels * s.out_h * s.out_w));
  for (int64_t n = 0; n < s.batch; ++n)
    for (int64_t o = 0; o < s.out_channels; ++o)
      for (int64_t oh = 0; oh < s.out_h; ++oh)
        for (int64_t ow = 0; ow < s.out_w; ++ow) {
          double acc = bias ? bias[o] : 0.0;
          for (int64_t c = 0; c < s.in_channels; ++c)
            for (int64_t kh = 0; kh < 3; ++kh)
              for (int64_t kw = 0; kw < 3; ++kw) {
                const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
                const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
                if (ih < 0 || ih >= s.in_h || iw < 0 || iw >= s.in_w) continue;
                acc += weight[(o * s.in_channels + c) * 9 + kh * 3 + kw] *
                       input[((n * s.in_channels + c) * s.in_h + ih) * s.in_w + iw];
              }
          out[((n * s.out_channels + o) * s.out_h + oh) * s.out_w + ow] = acc;
        }
  return out;
}

// Largest |got - want| / (atol + rtol * |want|); <= 1 means within tolerance. NaN counts as failure.
template <typename A, typename B>
double tolerance_ratio(const std::vector<A>& got, const std::vector<B>& want, double rtol, double atol) {
  if (got.size() != want.size()) return INFINITY;
  double worst = 0.0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i]));
    const double r = d / (atol + rtol * std::fabs(static_cast<double>(want[i])));
    if (!(r <= worst)) worst = std::isnan(r) ? INFINITY : r;
  }
  return worst;
}

struct Counter {
  int passed = 0, failed = 0;
  void check(bool ok, const std::string& what) {
    if (ok) { ++passed; return; }
    ++failed;
    std::printf("FAIL: %s\n", what.c_str());
  }
  int finish(const char* name) const {
    std::printf("%s: %d passed, %d failed\n", name, passed, failed);
    return failed == 0 ? 0 : 1;
  }
};

}  // namespace patsparse_test
