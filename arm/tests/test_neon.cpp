// NEON-specific tests (built only for aarch64; run under qemu-aarch64 by arm/test.sh):
//   * the build/CPU report NEON and dispatch picks it by default;
//   * a seeded random sweep of geometries (stride 1..3 per axis, padding 0..3, dilation 1..3,
//     sizes 1..40, batch 0..3, group 1..6, keep 0..1, bias on/off) against the scalar reference;
//   * filter groups whose members use different pattern ids / entry orders for the same positions,
//     and groups broken by one differing filter (the plan must not share weights across them).
// The shape matrix and the reference-vs-dense checks are in tests/cpp/test_kernels.cpp.
#include <cstdlib>

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
  return t.finish("test_neon");
}
