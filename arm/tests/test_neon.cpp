// NEON-specific tests (built only for aarch64; run under qemu-aarch64 by arm/test.sh):
//   * the build/CPU report NEON and dispatch picks it by default;
//   * a seeded random sweep of geometries (stride 1..3 per axis, padding 0..3, dilation 1..3,
//     sizes 1..40, batch 0..3, group 1..6, keep 0..1, bias on/off) against the scalar reference;
//   * filter groups whose members use different pattern ids / entry orders for the same positions,
//     and groups broken by one differing filter (the plan must not share weights across them);
//   * every tile of the NEON table (each G and V, 4 entries per pattern and other counts, with and
//     without bias, 0 runs) against a scalar loop over the TileArgs contract (plan.h), bit for bit
//     (integer data: every sum is exact, whatever the order or fusing of the multiply-adds).
// The shape matrix and the reference-vs-dense checks are in tests/cpp/test_kernels.cpp.
#include <cstdlib>

#include "arm/kernels/neon_kernels.h"
#include "csrc/kernels/plan.h"

#include "csrc/kernels/dispatch.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using namespace patsparse_test;

namespace {

bool neon_matches_reference(const ConvShape& s, const Compressed& w, bool with_bias, uint64_t seed) {
  const auto x = random_input(s.batch * s.in_channels * s.in_h * s.in_w, seed);
  const auto bias = random_input(s.out_channels, seed + 1);
  const float* b = with_bias ? bias.data() : nullptr;
  const size_t n = static_cast<size_t>(s.batch * s.out_channels * s.out_h * s.out_w);
  std::vector<float> ref(n, NAN), got(n, NAN);
  reference_forward<float>(s, w.view(), x.data(), b, ref.data());
  forward_f32(Isa::Neon, s, w.view(), x.data(), b, got.data());
  return tolerance_ratio(got, ref, 1e-5, 1e-5) <= 1.0;
}

// Pattern 8 lists pattern 0's positions in another order; filters at odd positions of each group
// switch their pattern-0 kernels to it (values permuted to match), which must not change results.
Compressed with_alias_patterns(Compressed c, int64_t group) {
  const std::vector<uint8_t> alias = {c.patterns[3], c.patterns[1], c.patterns[0], c.patterns[2]};
  c.patterns.insert(c.patterns.end(), alias.begin(), alias.end());
  c.num_patterns += 1;
  for (int64_t o = 0; o < c.cout; ++o) {
    if ((o % group) % 2 == 0) continue;
    for (int32_t k = c.filter_ptr[o]; k < c.filter_ptr[o + 1]; ++k) {
      if (c.kernel_pattern[k] != 0) continue;
      float old[4];
      for (int e = 0; e < 4; ++e) old[e] = c.values[k * 4 + e];
      for (int e = 0; e < 4; ++e)
        for (int f = 0; f < 4; ++f)
          if (c.patterns[f] == alias[e]) c.values[k * 4 + e] = old[f];
      c.kernel_pattern[k] = 8;
    }
  }
  return c;
}

// The TileArgs contract of plan.h, one scalar at a time.
void contract_tile(const TileArgs& t, int G, int V) {
  for (int g = 0; g < G; ++g)
    for (int64_t i = 0; i < 4 * V; ++i) {
      float acc = t.bias ? t.bias[g] : 0.f;
      for (int64_t r = 0; r < t.runs; ++r)
        for (int64_t e = 0; e < t.entries; ++e)
          acc += t.values[g][r * t.entries + e] *
                 t.src[t.run_channel[r] * t.channel_stride + t.tap_off[t.run_pattern[r] * t.entries + e] + i];
      t.out[g * t.out_stride + i] = acc;
    }
}

// Runs neon_microkernels().fn[G][V] and contract_tile on one random TileArgs.
bool tile_matches_portable(int G, int V, int64_t entries, int64_t runs, bool with_bias, Rng& rng) {
  const int64_t channels = 5, channel_stride = 300, patterns = 3;
  auto small_int = [&rng] { return static_cast<float>(rng.below(17) - 8); };
  std::vector<float> src(static_cast<size_t>(channels * channel_stride + 4 * V));
  for (auto& v : src) v = small_int();
  std::vector<int32_t> tap_off(static_cast<size_t>(patterns * entries));
  for (auto& o : tap_off) o = static_cast<int32_t>(rng.below(channel_stride));
  std::vector<int32_t> run_channel(static_cast<size_t>(runs));
  std::vector<uint8_t> run_pattern(static_cast<size_t>(runs));
  for (int64_t r = 0; r < runs; ++r) {
    run_channel[r] = static_cast<int32_t>(rng.below(channels));
    run_pattern[r] = static_cast<uint8_t>(rng.below(patterns));
  }
  std::vector<float> values(static_cast<size_t>(G * runs * entries)), bias(static_cast<size_t>(G));
  for (auto& v : values) v = small_int();
  for (auto& v : bias) v = small_int();
  const int64_t out_stride = kPlanMaxVecs * 4;
  std::vector<float> got(static_cast<size_t>(G * out_stride), NAN), want(got);
  TileArgs ta;
  ta.src = src.data();
  ta.channel_stride = channel_stride;
  ta.tap_off = tap_off.data();
  ta.run_channel = run_channel.data();
  ta.run_pattern = run_pattern.data();
  for (int g = 0; g < G; ++g) ta.values[g] = values.data() + g * runs * entries;
  ta.runs = runs;
  ta.entries = entries;
  ta.bias = with_bias ? bias.data() : nullptr;
  ta.out_stride = out_stride;
  ta.out = got.data();
  neon_microkernels().fn[G][V](ta);
  ta.out = want.data();
  contract_tile(ta, G, V);
  for (int g = 0; g < G; ++g)
    for (int64_t i = 0; i < 4 * V; ++i)
      if (!(got[g * out_stride + i] == want[g * out_stride + i])) return false;
  return true;
}

}  // namespace

int main() {
  Counter t;
  t.check(isa_supported(Isa::Neon), "NEON reported as supported");
  t.check(best_isa() == Isa::Neon, "best_isa() is neon");
  const char* env = std::getenv("PATSPARSE_ISA");
  if (!env) t.check(active_isa() == Isa::Neon, "active ISA defaults to neon");

  Rng rng(20261129);
  for (int i = 0; i < 400; ++i) {
    ConvShape s;
    s.batch = rng.below(4);
    s.in_channels = 1 + rng.below(9);
    s.out_channels = 1 + rng.below(11);
    s.in_h = 1 + rng.below(20);
    s.in_w = 1 + rng.below(40);
    s.stride_h = 1 + rng.below(3); s.stride_w = 1 + rng.below(3);
    s.pad_h = rng.below(4); s.pad_w = rng.below(4);
    s.dil_h = 1 + rng.below(3); s.dil_w = 1 + rng.below(3);
    s.out_h = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
    s.out_w = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
    if (s.out_h <= 0 || s.out_w <= 0) { --i; continue; }
    const int64_t group = 1 + rng.below(6);
    const bool bias = rng.below(2);
    const Compressed w = random_weights(s.out_channels, s.in_channels, rng.uniform(), group, rng.next());
    char name[200];
    std::snprintf(name, sizeof name, "random #%d: N=%lld Cin=%lld %lldx%lld Cout=%lld stride=(%lld,%lld) "
                  "pad=(%lld,%lld) dil=(%lld,%lld) group=%lld bias=%d", i, (long long)s.batch,
                  (long long)s.in_channels, (long long)s.in_h, (long long)s.in_w, (long long)s.out_channels,
                  (long long)s.stride_h, (long long)s.stride_w, (long long)s.pad_h, (long long)s.pad_w,
                  (long long)s.dil_h, (long long)s.dil_w, (long long)group, int(bias));
    t.check(neon_matches_reference(s, w, bias, rng.next()), name);
  }

  for (int64_t group : {2, 3, 4}) {
    const ConvShape s = make_shape(2, 8, 9, 21, 12, 1, 1, 1);
    Compressed w = with_alias_patterns(random_weights(12, 8, 0.7, group, 300 + group), group);
    t.check(neon_matches_reference(s, w, true, 7), "alias pattern ids inside groups of " + std::to_string(group));
    // Break the structure of one filter in the middle of a group: drop its last kernel.
    Compressed broken = w;
    const int64_t o = group - 1;
    if (broken.filter_ptr[o + 1] > broken.filter_ptr[o]) {
      const int32_t k = broken.filter_ptr[o + 1] - 1;
      broken.kernel_channel.erase(broken.kernel_channel.begin() + k);
      broken.kernel_pattern.erase(broken.kernel_pattern.begin() + k);
      broken.values.erase(broken.values.begin() + 4 * k, broken.values.begin() + 4 * k + 4);
      for (int64_t j = o + 1; j <= broken.cout; ++j) broken.filter_ptr[j] -= 1;
      t.check(neon_matches_reference(s, broken, false, 8), "group broken by filter " + std::to_string(o));
    }
  }

  const MicroKernels& mk = neon_microkernels();
  for (int G = 1; G <= kPlanMaxGroup; ++G) {
    t.check(mk.max_vecs[G] >= 1 && mk.max_vecs[G] <= kPlanMaxVecs, "neon table width for G=" + std::to_string(G));
    for (int V = 1; V <= mk.max_vecs[G]; ++V)
      for (int64_t entries : {4, 1, 3, 9})
        for (int64_t runs : {0, 1, 7}) {
          const bool bias = (V + runs) % 2 == 0;
          t.check(tile_matches_portable(G, V, entries, runs, bias, rng),
                  "tile G=" + std::to_string(G) + " V=" + std::to_string(V) + " entries=" + std::to_string(entries) +
                      " runs=" + std::to_string(runs) + " bias=" + std::to_string(bias));
        }
  }
  return t.finish("test_neon");
}
