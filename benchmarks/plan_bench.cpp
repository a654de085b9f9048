// Torch-free timing of plan_forward for one 3x3 layer (thread CPU time, median and min of the calls)
// and its max abs difference from the scalar reference. Random weights with the real structure (the
// 8 patterns of tests/helpers.py, kernels kept with probability `keep`, `group` consecutive filters
// sharing (channel, pattern), pattern-major CSR order like the format). Used for the A/B numbers in
// benchmarks/results/x86.md (build two trees, alternate the binaries). From the repository root:
//   g++ -O3 -std=c++20 -I. -Icsrc -o /tmp/plan_bench benchmarks/plan_bench.cpp
//       csrc/kernels/{plan,reference,dispatch,backward}.cpp csrc/kernels/x86/*.cpp   (one command line)
//   /tmp/plan_bench CIN COUT HW STRIDE KEEP GROUP [REPS=20] [ISA=avx512]
#include <time.h>
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>
#include "csrc/kernels/dispatch.h"
#include "csrc/kernels/plan.h"
#include "csrc/kernels/x86/x86_kernels.h"
using namespace patsparse;
static double cpu_now() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
int main(int argc, char** argv) {
  if (argc < 7) {
    std::fprintf(stderr, "usage: %s CIN COUT HW STRIDE KEEP GROUP [REPS] [ISA]\n", argv[0]);
    return 2;
  }
  int cin = atoi(argv[1]), cout = atoi(argv[2]), hw = atoi(argv[3]), stride = atoi(argv[4]);
  double keep = atof(argv[5]); int group = atoi(argv[6]); int reps = argc > 7 ? atoi(argv[7]) : 20;
  const char* isa_s = argc > 8 ? argv[8] : "avx512";
  uint8_t P8[32] = {0,1,3,4, 1,2,4,5, 3,4,6,7, 4,5,7,8, 1,3,4,5, 1,4,5,7, 3,4,5,7, 1,3,4,7};
  std::mt19937 rng(cin + cout);
  std::uniform_real_distribution<float> u(-1, 1);
  std::bernoulli_distribution kb(keep);
  std::uniform_int_distribution<int> pd(0, 7);
  std::vector<int32_t> fp{0}, kc; std::vector<uint8_t> kp; std::vector<float> vals;
  std::vector<std::pair<int,int>> list;  // (pattern, channel) pattern-major like the format
  for (int o = 0; o < cout; ++o) {
    if (o % group == 0) { list.clear(); for (int c = 0; c < cin; ++c) if (kb(rng)) list.push_back({pd(rng), c}); std::sort(list.begin(), list.end()); }
    for (auto [p, c] : list) { kc.push_back(c); kp.push_back(p); for (int e = 0; e < 4; ++e) vals.push_back(u(rng)); }
    fp.push_back(kc.size());
  }
  PatternWeights<float> w; w.num_patterns = 8; w.entries = 4; w.out_channels = cout; w.nnz = kc.size();
  w.patterns = P8; w.filter_ptr = fp.data(); w.kernel_channel = kc.data(); w.kernel_pattern = kp.data(); w.values = vals.data();
  ConvShape s; s.batch = 1; s.in_channels = cin; s.in_h = s.in_w = hw; s.out_channels = cout;
  s.stride_h = s.stride_w = stride; s.pad_h = s.pad_w = 1; s.dil_h = s.dil_w = 1;
  s.out_h = s.out_w = (hw + 2 - 3) / stride + 1;
  std::vector<float> x((size_t)cin * hw * hw), y((size_t)cout * s.out_h * s.out_w), r(y.size()), bias(cout);
  for (auto& v : x) v = u(rng);
  for (auto& v : bias) v = u(rng);
  Isa isa;
  if (!parse_isa(isa_s, &isa) || !set_active_isa(isa)) { std::fprintf(stderr, "ISA %s not available\n", isa_s); return 2; }
  auto plan = build_plan(w, cin);
  forward_f32(isa, s, w, plan.get(), x.data(), bias.data(), y.data());
  forward_f32(Isa::Scalar, s, w, nullptr, x.data(), bias.data(), r.data());
  double err = 0; for (size_t i = 0; i < y.size(); ++i) err = std::max(err, (double)std::fabs(y[i] - r[i]));
  std::vector<double> ts;
  for (int i = 0; i < reps; ++i) { double t0 = cpu_now(); forward_f32(isa, s, w, plan.get(), x.data(), bias.data(), y.data()); ts.push_back(cpu_now() - t0); }
  std::sort(ts.begin(), ts.end());
  double useful = 2.0 * vals.size() * s.out_h * s.out_w;
  printf("%4d %4d %3d s%d keep%.2f g%d: %.3f ms (min %.3f)  %.1f GF/s  err %.2g\n", cin, cout, hw, stride, keep, group,
         ts[reps/2]*1e3, ts[0]*1e3, useful / ts[reps/2] / 1e9, err);
}
