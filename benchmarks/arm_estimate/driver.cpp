// One-layer driver for benchmarks/arm_estimate (cross-built for aarch64, run under qemu-aarch64 with
// plugin.c). NOT a timer: it only brackets work with marker hints for the instruction counter.
//   driver CIN COUT HW STRIDE KEEP GROUP
// Builds ResNet-style 3x3 weights (pad 1, batch 1) with tests/cpp/test_util.h's random_weights (8
// patterns of 4 entries, each kernel kept with probability KEEP, GROUP consecutive filters sharing
// their (channel, pattern) list), runs plan_forward once to warm up, then
//   hint #40 / #41 around one plan_forward with the NEON micro-kernels (counted), and
//   hint #42 / #43 around one call of the dominant tile (traced for llvm-mca): the largest group
//   size present, the group of median length among those, the tile width plan_forward uses for the
//   first row block, on a real slab of that block.
// Prints "key value" lines: useful_macs, dense_macs, tile_G, tile_V, tile_runs, entries, out_*.
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "arm/kernels/neon_kernels.h"
#include "csrc/kernels/plan.h"
#include "csrc/kernels/slab.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;

int main(int argc, char** argv) {
  if (argc != 7) {
    std::fprintf(stderr, "usage: driver CIN COUT HW STRIDE KEEP GROUP\n");
    return 2;
  }
  const int64_t cin = std::atoll(argv[1]), cout = std::atoll(argv[2]), hw = std::atoll(argv[3]);
  const int64_t stride = std::atoll(argv[4]), group = std::atoll(argv[6]);
  const double keep = std::atof(argv[5]);
  const ConvShape s = patsparse_test::make_shape(1, cin, hw, hw, cout, stride, 1, 1);
  const auto w = patsparse_test::random_weights(cout, cin, keep, group, uint64_t(cin * 1000 + cout));
  const auto x = patsparse_test::random_input(cin * hw * hw, 7);
  std::vector<float> out(static_cast<size_t>(cout * s.out_h * s.out_w));
  const auto plan = build_plan(w.view(), cin);
  const MicroKernels& mk = neon_microkernels();

  plan_forward(*plan, mk, s, w.values.data(), x.data(), nullptr, out.data());  // warm: scratch, page faults
  __asm__ volatile("hint #40" ::: "memory");
  plan_forward(*plan, mk, s, w.values.data(), x.data(), nullptr, out.data());
  __asm__ volatile("hint #41" ::: "memory");

  // The dominant tile, set up as plan_forward sets it up for row block 0.
  slab::Geometry g;
  if (!slab::make_geometry(s, &g)) return 1;
  std::vector<float> slab_buf(static_cast<size_t>(g.slab_floats + 64));
  slab::build_slab(s, g, x.data(), 0, slab_buf.data());
  const std::vector<int32_t> tap_off = slab::tap_offsets(*plan, s, g);
  int gmax = 1;
  for (const PlanGroup& pg : plan->groups) gmax = std::max(gmax, int(pg.size));
  std::vector<const PlanGroup*> cands;
  for (const PlanGroup& pg : plan->groups)
    if (pg.size == gmax) cands.push_back(&pg);
  std::sort(cands.begin(), cands.end(), [](const PlanGroup* a, const PlanGroup* b) {
    return a->run_end - a->run_begin < b->run_end - b->run_begin;
  });
  const PlanGroup& grp = *cands[cands.size() / 2];
  const int64_t rows = std::min(g.block_rows, s.out_h), VL = mk.vec_len;
  const int64_t nvec = (rows * g.pitch + VL - 1) / VL, maxv = mk.max_vecs[gmax];
  const int64_t ntiles = (nvec + maxv - 1) / maxv, vper = (nvec + ntiles - 1) / ntiles;
  std::vector<float> stage(static_cast<size_t>(kPlanMaxGroup * kPlanMaxVecs * VL));
  TileArgs ta;
  ta.src = slab_buf.data() + VL * vper;  // the second tile: interior columns and rows
  ta.channel_stride = g.channel_stride;
  ta.tap_off = tap_off.data();
  ta.run_channel = plan->run_channel.data() + grp.run_begin;
  ta.run_pattern = plan->run_pattern.data() + grp.run_begin;
  for (int m = 0; m < grp.size; ++m)
    ta.values[m] = w.values.data() + int64_t(plan->filter_ptr[plan->out_order[grp.out_begin + m]]) * plan->entries;
  ta.runs = grp.run_end - grp.run_begin;
  ta.entries = plan->entries;
  ta.out = stage.data();
  ta.out_stride = kPlanMaxVecs * VL;
  mk.fn[gmax][vper](ta);  // warm
  __asm__ volatile("hint #42" ::: "memory");
  mk.fn[gmax][vper](ta);
  __asm__ volatile("hint #43" ::: "memory");

  std::printf("useful_macs %lld\n", (long long)(int64_t(w.kernel_channel.size()) * w.entries * s.out_h * s.out_w));
  std::printf("dense_macs %lld\n", (long long)(cout * cin * 9 * s.out_h * s.out_w));
  std::printf("tile_G %d\ntile_V %lld\ntile_runs %lld\nentries %lld\n", gmax, (long long)vper, (long long)ta.runs,
              (long long)w.entries);
  std::printf("out_h %lld\nout_w %lld\npitch %lld\nrow_blocks %lld\n", (long long)s.out_h, (long long)s.out_w,
              (long long)g.pitch, (long long)g.num_blocks);
  return 0;
}
