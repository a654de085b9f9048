// Torch-free test of the execution plan + micro-kernels against the scalar reference kernel:
// random compressed weights (with grouped filters and empty filters), random shapes (stride,
// padding, dilation), every micro-kernel table this machine runs (portable, AVX2, AVX-512; NEON on
// aarch64: link arm/kernels/*.cpp instead of csrc/kernels/x86/*.cpp), and a bad-index check.
// Build and run from the repository root:
//   g++ -O2 -std=c++20 -I. -Icsrc tests/cpp/test_x86.cpp csrc/kernels/{plan,reference,dispatch}.cpp \
//       csrc/kernels/x86/*.cpp -o /tmp/test_x86 && /tmp/test_x86
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/kernels/dispatch.h"
#include "csrc/kernels/plan.h"
#if defined(__x86_64__)
#include "csrc/kernels/x86/x86_kernels.h"
#elif defined(__aarch64__)
#include "arm/kernels/neon_kernels.h"
#endif

using namespace patsparse;

namespace {

struct Weights {
  std::vector<uint8_t> patterns{0, 1, 3, 4, 1, 2, 4, 5, 3, 4, 6, 7, 4, 5, 7, 8, 1, 3, 4, 5, 1, 4, 5, 7};
  std::vector<int32_t> filter_ptr, kernel_channel;
  std::vector<uint8_t> kernel_pattern;
  std::vector<float> values;
  PatternWeights<float> view(int64_t cout) const {
    PatternWeights<float> w;
    w.num_patterns = 6; w.entries = 4; w.out_channels = cout; w.nnz = static_cast<int64_t>(kernel_channel.size());
    w.patterns = patterns.data(); w.filter_ptr = filter_ptr.data(); w.kernel_channel = kernel_channel.data();
    w.kernel_pattern = kernel_pattern.data(); w.values = values.data();
    return w;
  }
};

// Filters in blocks of `group` share (channel, pattern) lists; filter 1 is empty.
Weights random_weights(std::mt19937& rng, int64_t cout, int64_t cin, double keep, int group) {
  Weights w;
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::bernoulli_distribution kept(keep);
  std::uniform_int_distribution<int> pat(0, 5);
  w.filter_ptr.push_back(0);
  std::vector<std::pair<int32_t, uint8_t>> list;
  for (int64_t o = 0; o < cout; ++o) {
    if (o % group == 0) {
      list.clear();
      for (int64_t c = 0; c < cin; ++c)
        if (kept(rng)) list.emplace_back(static_cast<int32_t>(c), static_cast<uint8_t>(pat(rng)));
    }
    if (o != 1)
      for (auto [c, p] : list) {
        w.kernel_channel.push_back(c);
        w.kernel_pattern.push_back(p);
        for (int e = 0; e < 4; ++e) w.values.push_back(u(rng));
      }
    w.filter_ptr.push_back(static_cast<int32_t>(w.kernel_channel.size()));
  }
  return w;
}

int failures = 0;

void check(const char* name, const MicroKernels& mk, std::mt19937& rng) {
  std::uniform_int_distribution<int> d(1, 3);
  for (int trial = 0; trial < 40; ++trial) {
    ConvShape s;
    s.batch = d(rng); s.in_channels = 1 + rng() % 40; s.out_channels = 1 + rng() % 13;
    s.in_h = 1 + rng() % 30; s.in_w = 1 + rng() % 40;
    s.stride_h = d(rng) == 3 ? 2 : 1; s.stride_w = d(rng);  // stride_w 3: build_slab's general column path
    s.pad_h = rng() % 3; s.pad_w = rng() % 3; s.dil_h = d(rng) == 3 ? 2 : 1; s.dil_w = 1;
    s.out_h = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
    s.out_w = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
    if (s.out_h <= 0 || s.out_w <= 0) continue;
    Weights w = random_weights(rng, s.out_channels, s.in_channels, 0.5, 1 + rng() % 4);
    std::vector<float> x(s.batch * s.in_channels * s.in_h * s.in_w), bias(s.out_channels);
    std::normal_distribution<float> n01;
    for (auto& v : x) v = n01(rng);
    for (auto& v : bias) v = n01(rng);
    const size_t out_n = s.batch * s.out_channels * s.out_h * s.out_w;
    std::vector<float> ref(out_n), got(out_n, NAN);
    const auto view = w.view(s.out_channels);
    reference_forward<float>(s, view, x.data(), bias.data(), ref.data());
    auto plan = build_plan(view, s.in_channels);
    plan_forward(*plan, mk, s, w.values.data(), x.data(), bias.data(), got.data(), serial_for, 1 + trial % 3);
    // Max error relative to the output's scale (FMA vs separate multiply-add rounding differs).
    double worst = 0, scale = 1e-6;
    for (size_t i = 0; i < out_n; ++i) scale = std::max(scale, double(std::abs(ref[i])));
    for (size_t i = 0; i < out_n; ++i) worst = std::max(worst, std::abs(double(got[i]) - ref[i]) / scale);
    if (!(worst < 1e-5)) {
      std::printf("FAIL %s trial %d: worst rel err %g\n", name, trial, worst);
      ++failures;
    }
  }
  // A bad index is rejected when the plan is built.
  Weights bad = random_weights(rng, 4, 5, 1.0, 1);
  bad.kernel_channel[2] = 5;
  try {
    build_plan(bad.view(4), 5);
    std::printf("FAIL %s: bad kernel_channel accepted\n", name);
    ++failures;
  } catch (const std::invalid_argument&) {
  }
  std::printf("%s: done\n", name);
}

// The tile names (microkernel_name) and the tiles plan_forward picks: a row of exactly 2 x the widest
// G = 4 tile runs that tile, named f32_patconv_g4v<max>__<isa>; every picked tile is in the table.
void check_names(const MicroKernels& mk, std::mt19937& rng) {
  const std::string isa = mk.isa;
  auto fail = [&](const std::string& what) {
    std::printf("FAIL %s names: %s\n", mk.isa, what.c_str());
    ++failures;
  };
  ConvShape s;
  s.batch = 1; s.in_channels = 6; s.out_channels = 8;
  s.in_h = 3; s.in_w = 2 * mk.vec_len * mk.max_vecs[4];  // pitch = in_w at padding 0
  s.out_h = conv_out_size(s.in_h, 0, 1, 1); s.out_w = conv_out_size(s.in_w, 0, 1, 1);
  const Weights w = random_weights(rng, s.out_channels, s.in_channels, 1.0, 4);
  const auto plan = build_plan(w.view(s.out_channels), s.in_channels);
  const std::vector<std::string> names = plan_forward_tiles(*plan, mk, s);
  const std::string widest = microkernel_name("patconv", 4, mk.max_vecs[4], mk.isa);
  if (std::find(names.begin(), names.end(), widest) == names.end()) fail("no " + widest);
  for (const std::string& n : names) {
    bool offered = false;
    for (int G = 1; G <= kPlanMaxGroup; ++G)
      for (int V = 1; V <= mk.max_vecs[G]; ++V) offered = offered || n == microkernel_name("patconv", G, V, mk.isa);
    if (!offered) fail(n + " is not in the table");
  }
  if (isa == "avx512" && widest != "f32_patconv_g4v6__avx512") fail("AVX-512 widest G=4 tile is " + widest);
  if (isa == "avx2" && widest != "f32_patconv_g4v3__avx2") fail("AVX2 widest G=4 tile is " + widest);
  if (names.empty() || !plan_forward_tiles(*plan, mk, ConvShape{}).empty()) fail("empty / non-empty lists");
  // A hole in the table is an error naming the missing micro-kernel.
  MicroKernels holey = mk;
  holey.fn[2][1] = nullptr;
  std::vector<float> x(s.batch * s.in_channels * s.in_h * s.in_w), out(s.batch * s.out_channels * s.out_h * s.out_w);
  std::string err;
  try {
    plan_forward(*plan, holey, s, w.values.data(), x.data(), nullptr, out.data());
  } catch (const std::invalid_argument& e) {
    err = e.what();
  }
  if (err.find(microkernel_name("patconv", 2, 1, mk.isa)) == std::string::npos) fail("hole error: '" + err + "'");
}

}  // namespace

int main() {
  std::mt19937 rng(1234);
  if (microkernel_name("spmm", 0, 8, "avx512") != "f32_spmm_v8__avx512" ||
      microkernel_name("patconv_gradv", 2, 0, "avx2") != "f32_patconv_gradv_g2__avx2") {
    std::printf("FAIL microkernel_name\n");
    ++failures;
  }
  check("portable", portable_microkernels(), rng);
  check_names(portable_microkernels(), rng);
#if defined(__x86_64__)
  if (cpu_has_avx2_fma()) { check("avx2", avx2_microkernels(), rng); check_names(avx2_microkernels(), rng); }
  if (cpu_has_avx512()) { check("avx512", avx512_microkernels(), rng); check_names(avx512_microkernels(), rng); }
#elif defined(__aarch64__)
  check("neon", neon_microkernels(), rng);
  check_names(neon_microkernels(), rng);
#endif
  std::printf(failures ? "FAILED (%d)\n" : "all passed\n", failures);
  return failures ? 1 : 0;
}
