// CPU self-test of the CUDA path (no GPU needed): builds plans with build_plan and runs the CUDA
// kernels' own source (pattern_conv_kernels.cuh) under a block emulator -- one std::thread per CUDA
// thread, std::barrier for __syncthreads, a byte buffer for dynamic shared memory (filled with 0xFF,
// i.e. NaN, so a read of an unstaged element shows) -- and compares every kernel with the scalar
// reference kernels (csrc/kernels/reference.cpp). Checks the index math (stride, padding, dilation,
// borders, tiles, channel chunks, groups, transposed lists), not timing or memory-model issues.
// Built and run by csrc/cuda/check_compile.sh; exit status 0 = all passed.
#define PATSPARSE_EMULATE 1

#include <barrier>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>
#include <unistd.h>

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
};
namespace emu {
thread_local dim3 thread_idx;
dim3 block_idx, block_dim, grid_dim;
std::barrier<>* bar = nullptr;
unsigned char* smem = nullptr;
}  // namespace emu
#define threadIdx emu::thread_idx
#define blockIdx emu::block_idx
#define blockDim emu::block_dim
#define gridDim emu::grid_dim
#define __syncthreads() emu::bar->arrive_and_wait()
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define PATSPARSE_DYN_SMEM(name) unsigned char* name = emu::smem

#include "cuda/pattern_conv_kernels.cuh"
#include "kernels/pattern_conv.h"

using namespace patsparse;
using namespace patsparse::cuda;

namespace {

// Runs f() as a grid of blocks of block.x threads, blocks one after another.
template <typename F>
void emulate(dim3 grid, dim3 block, size_t smem_bytes, F f) {
  emu::grid_dim = grid;
  emu::block_dim = block;
  std::vector<unsigned char> smem(smem_bytes + 16);
  emu::smem = smem.data();
  std::barrier<> bar(static_cast<std::ptrdiff_t>(block.x));
  emu::bar = &bar;
  const unsigned nblocks = grid.x * grid.y;
  std::vector<std::thread> threads;
  for (unsigned t = 0; t < block.x; ++t) {
    threads.emplace_back([&, t] {
      emu::thread_idx = dim3{t, 0, 0};
      for (unsigned blk = 0; blk < nblocks; ++blk) {
        if (t == 0) {
          emu::block_idx = dim3{blk % grid.x, blk / grid.x, 0};
          std::memset(smem.data(), 0xFF, smem.size());
        }
        bar.arrive_and_wait();
        f();
        bar.arrive_and_wait();
      }
    });
  }
  for (auto& th : threads) th.join();
}

struct Weights {
  std::vector<uint8_t> patterns;  // [K, E]
  int K = 0, E = 0;
  std::vector<int32_t> filter_ptr, kernel_channel;
  std::vector<uint8_t> kernel_pattern;
  std::vector<double> values;
};

std::vector<uint8_t> make_patterns(int K, int E, std::mt19937& rng) {
  std::vector<uint8_t> p;
  for (int k = 0; k < K; ++k) {
    std::vector<uint8_t> pos = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    std::shuffle(pos.begin(), pos.end(), rng);
    std::sort(pos.begin(), pos.begin() + E);
    p.insert(p.end(), pos.begin(), pos.begin() + E);
  }
  return p;
}

// group: consecutive filters share the (channel, pattern) set; dup: some filters get a second kernel
// on an already used channel (allowed by the format; the reference sums both).
Weights make_weights(int cout, int cin, int K, int E, double keep, int group, bool dup, std::mt19937& rng) {
  Weights w;
  w.K = K;
  w.E = E;
  w.patterns = make_patterns(K, E, rng);
  std::uniform_real_distribution<double> u(0, 1);
  std::normal_distribution<double> nd(0, 1);
  std::vector<std::pair<int, int>> shared;  // (channel, pattern) of the current group
  w.filter_ptr.push_back(0);
  for (int o = 0; o < cout; ++o) {
    if (o % group == 0) {
      shared.clear();
      for (int c = 0; c < cin; ++c)
        if (u(rng) < keep) shared.push_back({c, static_cast<int>(rng() % K)});
      if (dup && !shared.empty()) shared.push_back({shared[0].first, static_cast<int>(rng() % K)});
      std::shuffle(shared.begin(), shared.end(), rng);  // any order: the plan sorts
    }
    for (auto [c, p] : shared) {
      w.kernel_channel.push_back(c);
      w.kernel_pattern.push_back(static_cast<uint8_t>(p));
      for (int e = 0; e < E; ++e) w.values.push_back(nd(rng));
    }
    w.filter_ptr.push_back(static_cast<int32_t>(w.kernel_channel.size()));
  }
  return w;
}

int failures = 0;

template <typename T>
void expect_close(const char* what, const std::string& tag, const std::vector<T>& got, const std::vector<T>& want) {
  const double tol = sizeof(T) == 8 ? 1e-10 : 2e-4;
  double worst = 0;
  size_t at = 0;
  bool bad = got.size() != want.size();
  for (size_t i = 0; !bad && i < got.size(); ++i) {
    const double d = std::fabs(static_cast<double>(got[i]) - static_cast<double>(want[i])) /
                     (1.0 + std::fabs(static_cast<double>(want[i])));
    if (!(d <= tol)) bad = true;  // NaN counts as bad
    if (!(d <= worst)) { worst = d; at = i; }
  }
  if (bad) {
    ++failures;
    std::printf("FAIL %s %s: worst rel err %g at %zu (got %g want %g), sizes %zu/%zu\n", what, tag.c_str(), worst, at,
                at < got.size() ? static_cast<double>(got[at]) : 0.0,
                at < want.size() ? static_cast<double>(want[at]) : 0.0, got.size(), want.size());
  }
}

template <typename T>
void run_case(int N, int cin, int H, int W, int cout, int stride, int pad, int dil, bool bias, int K, int E,
              double keep, int group, bool dup, int expect_group, std::mt19937& rng) {
  Weights w = make_weights(cout, cin, K, E, keep, group, dup, rng);
  ConvShape s;
  s.batch = N; s.in_channels = cin; s.in_h = H; s.in_w = W; s.out_channels = cout;
  s.stride_h = s.stride_w = stride; s.pad_h = s.pad_w = pad; s.dil_h = s.dil_w = dil;
  s.out_h = conv_out_size(H, pad, dil, stride);
  s.out_w = conv_out_size(W, pad, dil, stride);
  char buf[256];
  std::snprintf(buf, sizeof buf, "[%s N=%d Cin=%d %dx%d Cout=%d s=%d p=%d d=%d bias=%d K=%d E=%d keep=%.2f g=%d dup=%d]",
                sizeof(T) == 8 ? "f64" : "f32", N, cin, H, W, cout, stride, pad, dil, bias, K, E, keep, group, dup);
  const std::string tag = buf;
  if (s.out_h <= 0 || s.out_w <= 0) return;
  const int64_t nnz = static_cast<int64_t>(w.kernel_channel.size());

  HostPlan hp;
  std::string err;
  try {
    hp = build_plan(K, E, cout, nnz, w.patterns.data(), w.filter_ptr.data(), w.kernel_channel.data(),
                    w.kernel_pattern.data(), cin);
  } catch (const std::invalid_argument& e) {
    err = e.what();
  }
  if (dup) {  // a (filter, channel) kernel listed twice is invalid (validate_format rejects it)
    if (err.empty()) { ++failures; std::printf("FAIL build_plan %s: duplicate kernel accepted\n", tag.c_str()); }
    return;
  }
  if (!err.empty()) { ++failures; std::printf("FAIL build_plan %s: %s\n", tag.c_str(), err.c_str()); return; }
  if (expect_group > 0 && hp.group != expect_group) {
    ++failures;
    std::printf("FAIL group detection %s: got %d want %d\n", tag.c_str(), hp.group, expect_group);
  }
  const std::vector<int32_t> packed = pack_plan(hp);
  const DevicePlan dp = plan_view(hp, packed.data());

  std::normal_distribution<double> nd(0, 1);
  std::vector<T> values(w.values.begin(), w.values.end());
  std::vector<T> x(static_cast<size_t>(N) * cin * H * W), b(cout), gout(static_cast<size_t>(N) * cout * s.out_h * s.out_w);
  for (auto& v : x) v = static_cast<T>(nd(rng));
  for (auto& v : b) v = static_cast<T>(nd(rng));
  for (auto& v : gout) v = static_cast<T>(nd(rng));
  PatternWeights<T> pw;
  pw.num_patterns = K; pw.entries = E; pw.out_channels = cout; pw.nnz = nnz;
  pw.patterns = w.patterns.data(); pw.filter_ptr = w.filter_ptr.data(); pw.kernel_channel = w.kernel_channel.data();
  pw.kernel_pattern = w.kernel_pattern.data(); pw.values = values.data();
  const T* bp = bias ? b.data() : nullptr;
  const ConvArgs<T> a = make_args(s, pw);

  // forward
  std::vector<T> want(gout.size());
  reference_forward<T>(s, pw, x.data(), bp, want.data());
  for (int P : {1, 2, 4}) {
    const FwdLaunch l = forward_launch(a, dp, P);
    if (!l.tiled) { ++failures; std::printf("FAIL %s: tiled path not taken\n", tag.c_str()); break; }
    std::vector<T> out(want.size(), T(-777));
    const dim3 grid{static_cast<unsigned>(l.grid_x), static_cast<unsigned>(l.grid_y), 1};
    auto launch = [&](auto g_tag, auto p_tag) {
      constexpr int G = decltype(g_tag)::value, PP = decltype(p_tag)::value;
      emulate(grid, dim3{static_cast<unsigned>(fwd_threads<PP>()), 1, 1}, l.smem_bytes,
              [&] { forward_tiled_kernel<T, G, PP>(a, dp, l, x.data(), bp, out.data()); });
    };
    auto with_p = [&](auto g_tag) {
      if (P == 1) launch(g_tag, std::integral_constant<int, 1>{});
      else if (P == 2) launch(g_tag, std::integral_constant<int, 2>{});
      else launch(g_tag, std::integral_constant<int, 4>{});
    };
    switch (dp.group) {
      case 8: with_p(std::integral_constant<int, 8>{}); break;
      case 4: with_p(std::integral_constant<int, 4>{}); break;
      case 2: with_p(std::integral_constant<int, 2>{}); break;
      default: with_p(std::integral_constant<int, 1>{}); break;
    }
    expect_close(("forward_tiled P=" + std::to_string(P)).c_str(), tag, out, want);
  }
  {
    std::vector<T> out(want.size(), T(-777));
    emulate(dim3{3, 1, 1}, dim3{64, 1, 1}, 0, [&] {
      forward_simple_kernel<T>(a, pw.filter_ptr, pw.kernel_channel, pw.kernel_pattern, x.data(), bp, out.data());
    });
    expect_close("forward_simple", tag, out, want);
  }
  // grad_input
  {
    std::vector<T> ref(x.size()), got(x.size(), T(-777));
    reference_grad_input<T>(s, pw, gout.data(), ref.data());
    // Real x extent, a small y extent (exercises the grid-stride loop over planes).
    const unsigned gx = static_cast<unsigned>((H * W + kGinThreads - 1) / kGinThreads);
    if (N * cin > 0)
      emulate(dim3{gx, 3, 1}, dim3{kGinThreads, 1, 1}, 0, [&] { grad_input_kernel<T>(a, dp, gout.data(), got.data()); });
    expect_close("grad_input", tag, got, ref);
  }
  // grad_values (the emulated block reduction is slow: only the first 40 kernels are checked)
  {
    std::vector<T> ref(values.size());
    reference_grad_values<T>(s, pw, x.data(), gout.data(), ref.data());
    const int64_t sub = std::min<int64_t>(nnz, 40);
    ref.resize(static_cast<size_t>(sub * E));
    std::vector<T> got(ref.size(), T(-777));
    const unsigned grid = static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(sub, 7)));
    if (sub > 0)
      emulate(dim3{grid, 1, 1}, dim3{kGvThreads, 1, 1}, kGvThreads * sizeof(T), [&] {
        grad_values_kernel<T>(a, dp, pw.kernel_channel, pw.kernel_pattern, sub, x.data(), gout.data(), got.data());
      });
    expect_close("grad_values", tag, got, ref);
  }
}

void check_validation() {
  const uint8_t pats[4] = {0, 1, 3, 4};
  const int32_t fp[3] = {0, 1, 2};
  const int32_t kc_bad[2] = {0, 5};
  const uint8_t kp[2] = {0, 0};
  auto rejects = [&](const int32_t* kc, const uint8_t* kp) {
    try {
      build_plan(1, 4, 2, 2, pats, fp, kc, kp, 3);
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  if (!rejects(kc_bad, kp)) {
    ++failures;
    std::printf("FAIL validation: out-of-range kernel_channel accepted\n");
  }
  const uint8_t kp_bad[2] = {0, 1};
  const int32_t kc[2] = {0, 1};
  if (!rejects(kc, kp_bad)) {
    ++failures;
    std::printf("FAIL validation: out-of-range kernel_pattern accepted\n");
  }
}

}  // namespace

int main() {
  std::signal(SIGALRM, [](int) { std::_Exit(3); });  // a __syncthreads mismatch would hang: fail instead
  alarm(600);
  std::mt19937 rng(1234);
  check_validation();
  // N, Cin, H, W, Cout, stride, pad, dil, bias, K, E, keep, group, dup, expected plan group (0: any)
  run_case<double>(2, 3, 8, 8, 4, 1, 1, 1, true, 8, 4, 0.6, 1, false, 0, rng);
  run_case<double>(1, 5, 9, 7, 6, 1, 0, 1, false, 8, 4, 0.5, 1, false, 0, rng);
  run_case<double>(3, 4, 11, 13, 5, 2, 1, 1, true, 8, 4, 0.7, 1, false, 0, rng);
  run_case<double>(1, 3, 12, 12, 4, 1, 2, 1, true, 4, 4, 0.8, 1, false, 0, rng);
  run_case<double>(2, 4, 13, 11, 3, 1, 2, 2, false, 8, 4, 0.6, 1, false, 0, rng);
  run_case<double>(1, 8, 15, 17, 16, 2, 2, 2, true, 8, 4, 0.5, 4, false, 4, rng);
  run_case<double>(1, 16, 7, 7, 32, 1, 1, 1, true, 8, 4, 0.4, 8, false, 8, rng);
  run_case<double>(2, 40, 20, 18, 12, 1, 1, 1, false, 8, 4, 0.5, 1, false, 1, rng);  // several channel chunks, 2 tiles
  run_case<double>(1, 40, 9, 35, 10, 1, 1, 1, true, 8, 4, 0.5, 2, false, 2, rng);   // partial last group, 3 tiles wide
  run_case<double>(1, 1, 3, 3, 1, 1, 0, 1, false, 8, 4, 1.0, 1, false, 0, rng);
  run_case<double>(1, 2, 1, 1, 2, 1, 1, 1, true, 8, 4, 0.9, 1, false, 0, rng);
  run_case<double>(1, 7, 30, 33, 9, 2, 1, 1, true, 8, 4, 0.5, 1, false, 0, rng);
  run_case<double>(2, 6, 10, 9, 8, 2, 0, 1, true, 5, 3, 0.5, 1, true, 0, rng);       // E=3, duplicate channels: rejected
  run_case<double>(1, 5, 9, 10, 7, 1, 1, 3, true, 2, 9, 0.6, 1, false, 0, rng);      // E=9 (dense kernels), dil 3
  run_case<double>(0, 3, 8, 8, 4, 1, 1, 1, true, 8, 4, 0.5, 1, false, 0, rng);       // batch 0
  run_case<double>(1, 4, 6, 6, 5, 1, 1, 1, true, 8, 4, 0.0, 1, false, 0, rng);       // no kernels at all
  run_case<double>(1, 3, 5, 5, 3, 3, 4, 1, true, 8, 4, 0.8, 1, false, 0, rng);       // stride 3, large padding
  run_case<double>(1, 3, 20, 20, 2, 1, 0, 8, false, 8, 4, 0.8, 1, false, 0, rng);    // dilation 8
  run_case<float>(2, 32, 16, 16, 24, 1, 1, 1, false, 8, 4, 0.5, 4, false, 4, rng);
  run_case<float>(1, 7, 30, 33, 9, 2, 1, 1, true, 8, 4, 0.5, 1, false, 0, rng);
  if (failures) {
    std::printf("plan_selftest: %d FAILURES\n", failures);
    return 1;
  }
  std::printf("plan_selftest: all emulated CUDA kernels match the reference\n");
  return 0;
}
