// Torch-free test of PatternConv2d's code decode (csrc/kernels/codes.h): every bit width and both
// schemes against the level table of torch_patsparse/quant.py, float and double; corrupt streams
// (short, long, nonzero padding, a code past the range), bad scales and overflow must throw.
// Runs under ASan/UBSan in CI (scripts/test_cpp.sh).
#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/kernels/codes.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using patsparse_test::Counter;
using patsparse_test::Rng;

namespace {

int levels(int bits) { return bits <= 2 ? 1 : (1 << (bits - 1)) - 1; }
int width(int bits) { return bits < 2 ? 2 : bits; }

std::vector<uint8_t> pack(const std::vector<int>& codes, int bits) {  // bitpack.pack(code + levels, width)
  std::vector<uint8_t> out;
  int64_t pos = 0;
  for (int c : codes)
    for (int i = 0; i < width(bits); ++i, ++pos) {
      if (pos % 8 == 0) out.push_back(0);
      out.back() |= static_cast<uint8_t>((((c + levels(bits)) >> i) & 1) << (pos % 8));
    }
  return out;
}

template <typename T>
bool throws(const std::vector<uint8_t>& packed, int64_t count, int bits, bool pow2, T scale) {
  // Room for the valid calls; the huge-count case must throw before it writes anything.
  std::vector<T> out(static_cast<size_t>(count > 0 && count < 1024 ? count : 1));
  try {
    decode_pattern_codes<T>(packed.data(), static_cast<int64_t>(packed.size()), count, bits, pow2, scale, out.data());
  } catch (const std::invalid_argument&) {
    return true;
  }
  return false;
}

template <typename T>
void check_decode(Counter& c, int bits, bool pow2, int64_t count, uint64_t seed) {
  Rng rng(seed);
  std::vector<int> codes(static_cast<size_t>(count));
  for (int& v : codes) v = static_cast<int>(rng.next() % (2 * levels(bits) + 1)) - levels(bits);
  const std::vector<uint8_t> packed = pack(codes, bits);
  const T scale = T(0.37);
  std::vector<T> out(static_cast<size_t>(count));
  decode_pattern_codes<T>(packed.data(), static_cast<int64_t>(packed.size()), count, bits, pow2, scale, out.data());
  bool ok = true;
  for (int64_t i = 0; i < count; ++i) {
    const int v = codes[i], mag = v < 0 ? -v : v;
    const T mult = pow2 ? (v == 0 ? T(0) : T(v < 0 ? -1 : 1) * T(std::pow(2.0, 1 - mag))) : T(v);
    ok = ok && out[i] == mult * scale;
  }
  c.check(ok, "decode bits=" + std::to_string(bits) + (pow2 ? " pow2" : " uniform") + " count=" + std::to_string(count));
}

}  // namespace

int main() {
  Counter c;
  uint64_t seed = 1;
  for (int bits = 1; bits <= 8; ++bits)
    for (bool pow2 : {false, true})
      for (int64_t count : {0, 1, 7, 36, 1001}) {
        check_decode<float>(c, bits, pow2, count, seed++);
        check_decode<double>(c, bits, pow2, count, seed++);
      }
  const std::vector<uint8_t> good = pack({-7, 0, 3, 7, 1}, 4);  // 5 codes, 20 bits, 3 bytes
  c.check(!throws<float>(good, 5, 4, false, 1.f), "accepts a good stream");
  c.check(throws<float>({good.begin(), good.end() - 1}, 5, 4, false, 1.f), "rejects a short stream");
  std::vector<uint8_t> longer = good;
  longer.push_back(0);
  c.check(throws<float>(longer, 5, 4, false, 1.f), "rejects a long stream");
  std::vector<uint8_t> padded = good;
  padded.back() |= 0x80;
  c.check(throws<float>(padded, 5, 4, false, 1.f), "rejects nonzero padding bits");
  c.check(throws<float>(pack({8}, 4), 1, 4, false, 1.f), "rejects code 8 at 4 bits (|code| <= 7)");
  c.check(throws<float>(pack({2}, 2), 1, 2, false, 1.f), "rejects code 2 at 2 bits (|code| <= 1)");
  c.check(throws<float>(good, 5, 0, false, 1.f) && throws<float>(good, 5, 9, false, 1.f), "rejects bits outside 1..8");
  auto bad_params = [](int64_t k, int64_t e, int64_t b, const char* scheme) {
    try {
      pattern_code_count(k, e, b, scheme);
    } catch (const std::invalid_argument&) {
      return true;
    }
    return false;
  };
  c.check(pattern_code_count(3, 4, 4, "uniform") == 12 && pattern_code_count(0, 9, 8, "pow2") == 0,
          "pattern_code_count of good parameters");
  c.check(bad_params(-1, 4, 4, "uniform") && bad_params(3, 0, 4, "uniform") && bad_params(3, 10, 4, "uniform") &&
              bad_params(3, 4, 0, "uniform") && bad_params(3, 4, 9, "pow2") && bad_params(3, 4, 4, "log") &&
              bad_params(INT64_MAX / 2, 9, 4, "uniform"),
          "pattern_code_count rejects each bad parameter");
  c.check(throws<float>(good, 5, 4, false, -1.f), "rejects a negative scale");
  c.check(throws<float>(good, 5, 4, false, NAN) && throws<float>(good, 5, 4, false, INFINITY), "rejects NaN / inf scale");
  c.check(throws<float>(good, 5, 4, false, 0.f), "rejects scale 0 with nonzero codes");
  c.check(!throws<float>(pack({0, 0}, 4), 2, 4, false, 0.f), "accepts scale 0 for all-zero codes");
  c.check(throws<float>(good, 5, 4, false, 1e38f), "rejects a scale that overflows float");
  c.check(!throws<double>(good, 5, 4, false, 1e38), "double holds 7 * 1e38");
  c.check(throws<float>(good, -1, 4, false, 1.f), "rejects a negative count");
  c.check(throws<float>(good, INT64_MAX / 2, 4, false, 1.f), "rejects a count whose bit length overflows");
  return c.finish("test_codes");
}
