// Torch-free test of the max-pool kernel (csrc/kernels/maxpool.h): every ISA path this machine runs
// (and NEON under qemu, arm/test.sh), serial and threaded, over widths around the vector lengths,
// odd sizes (floor mode drops the last row / column), k = 1..3, against a naive window maximum in
// PyTorch's order (first maximum of the window in row-major order, so a -0 / +0 tie keeps the sign
// max_pool2d gives; NaN propagates), bit for bit; every path gives the reference's bits; bad shapes must throw. Runs under ASan/UBSan in CI (scripts/test_cpp.sh).
#include <array>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "csrc/kernels/dispatch.h"
#include "csrc/kernels/maxpool.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using patsparse_test::Counter;
using patsparse_test::Rng;

namespace {

// As ATen's max_pool2d: row-major over the window, a value replaces the maximum when larger or NaN.
std::vector<float> naive(const MaxPoolShape& s, const std::vector<float>& x) {
  const int64_t oh = s.h / s.k, ow = s.w / s.k;
  std::vector<float> y(static_cast<size_t>(s.planes * oh * ow));
  for (int64_t p = 0; p < s.planes; ++p)
    for (int64_t oy = 0; oy < oh; ++oy)
      for (int64_t ox = 0; ox < ow; ++ox) {
        float m = -std::numeric_limits<float>::infinity();
        for (int64_t i = 0; i < s.k; ++i)
          for (int64_t j = 0; j < s.k; ++j) {
            const float v = x[(p * s.h + oy * s.k + i) * s.w + ox * s.k + j];
            if (v > m || std::isnan(v)) m = v;
          }
        y[(p * oh + oy) * ow + ox] = m;
      }
  return y;
}

bool same_value(float a, float b) { return (std::isnan(a) && std::isnan(b)) || a == b; }
bool same_bits(float a, float b) { return std::memcmp(&a, &b, sizeof a) == 0; }

void check_case(Counter& c, Isa isa, const MaxPoolShape& s, bool threaded, uint64_t seed) {
  Rng rng(seed);
  std::vector<float> x(static_cast<size_t>(s.planes * s.h * s.w));
  const float specials[] = {0.f, -0.f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(),
                            -std::numeric_limits<float>::infinity(), 1.f, 1.f};
  for (float& v : x) {
    const double u = rng.uniform();
    v = u < 0.1 ? specials[rng.next() % 7] : static_cast<float>(u * 4 - 2);  // ties, signed zeros, NaN, inf
  }
  const size_t out_size = static_cast<size_t>(s.planes * s.out_h() * s.out_w());
  std::vector<float> y(out_size + 1, 12345.f), ref(out_size + 1, 12345.f);  // one sentinel past the end
  if (threaded) max_pool2d_f32(isa, s, x.data(), y.data(), patsparse_test::threaded_for, 3);
  else max_pool2d_f32(isa, s, x.data(), y.data());
  reference_max_pool2d<float>(s, x.data(), ref.data());
  const std::vector<float> want = naive(s, x);
  bool values = true, bits = true;
  for (size_t i = 0; i < out_size; ++i) {
    values = values && same_value(y[i], want[i]) && same_bits(y[i], want[i]);  // the sign of a zero too
    bits = bits && same_bits(y[i], ref[i]);
  }
  char what[160];
  std::snprintf(what, sizeof what, "%s planes %lld %lldx%lld k %lld threads %d", isa_name(isa), (long long)s.planes,
                (long long)s.h, (long long)s.w, (long long)s.k, threaded);
  c.check(values && y[out_size] == 12345.f, std::string(what) + ": values");
  c.check(bits, std::string(what) + ": bits of the reference");
}

}  // namespace

int main() {
  Counter c;
  const std::vector<Isa> isas = patsparse_test::supported_isas();
  uint64_t seed = 1;
  for (Isa isa : isas) {
    for (int64_t k : {1, 2, 3})
      for (int64_t w : {2, 3, 4, 7, 8, 9, 16, 17, 31, 32, 33, 34, 64, 65, 66, 112, 225})
        for (int64_t h : {3, 4, 9})
          if (w >= k) check_case(c, isa, {3, h, w, k}, false, seed++);
    // empty (no planes), one plane, many planes with few rows, large planes, threaded row splits
    for (auto [planes, h, w] : std::vector<std::array<int64_t, 3>>{
             {0, 4, 4}, {1, 2, 2}, {1, 224, 224}, {64, 14, 14}, {7, 57, 113}, {2, 3, 70000}}) {
      for (bool threaded : {false, true}) check_case(c, isa, {planes, h, w, 2}, threaded, seed++);
    }
  }
  // bad shapes throw
  for (auto [planes, h, w, k] : std::vector<std::array<int64_t, 4>>{
           {-1, 4, 4, 2}, {0, 1, 1, 2}, {0, 4, 1, 2}, {1, 1, 4, 2}, {1, 4, 1, 2}, {1, 4, 4, 0}, {1, 4, 4, -2},
           {int64_t(1) << 40, int64_t(1) << 20, int64_t(1) << 20, 2}}) {
    const std::string err = patsparse_test::error_of(
        [&] { max_pool2d_f32(isas.back(), {planes, h, w, k}, nullptr, nullptr); });
    c.check(!err.empty(), "rejects a bad shape: " + std::to_string(planes) + " " + std::to_string(h) + "x" +
                              std::to_string(w) + " k " + std::to_string(k));
  }
  return c.finish("test_maxpool");
}
