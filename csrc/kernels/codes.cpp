#include "codes.h"

#include <cmath>

namespace patsparse {

int64_t pattern_code_count(int64_t kept_kernels, int64_t entries, int64_t bits, std::string_view scheme) {
  if (kept_kernels < 0) throw_invalid("kept_kernels must be >= 0, got " + std::to_string(kept_kernels));
  if (entries < 1 || entries > 9) throw_invalid("entries must be in 1..9, got " + std::to_string(entries));
  if (bits < 1 || bits > 8) throw_invalid("bits must be in 1..8, got " + std::to_string(bits));
  if (scheme != "uniform" && scheme != "pow2")
    throw_invalid("scheme must be 'uniform' or 'pow2', got '" + std::string(scheme) + "'");
  int64_t count;
  if (!mul_ok(kept_kernels, entries, &count))
    throw_invalid(std::to_string(kept_kernels) + " x " + std::to_string(entries) + " values overflow int64");
  return count;
}

template <typename T>
void decode_pattern_codes(const uint8_t* packed, int64_t bytes, int64_t count, int bits, bool pow2, T scale, T* out) {
  if (bits < 1 || bits > 8) throw_invalid("code bits must be in 1..8, got " + std::to_string(bits));
  if (!std::isfinite(scale) || scale < 0) throw_invalid("'scale' must be a finite positive number");
  const int levels = bits <= 2 ? 1 : (1 << (bits - 1)) - 1;
  const PackedReader read("codes", packed, bytes, count, bits < 2 ? 2 : bits);
  for (int64_t i = 0; i < count; ++i) {
    const int code = static_cast<int>(read(i)) - levels;
    if (code < -levels || code > levels)
      throw_invalid("code " + std::to_string(code) + " exceeds the " + std::to_string(bits) + "-bit range (|code| <= " +
                    std::to_string(levels) + ")");
    const int mag = code < 0 ? -code : code;
    const T mult = pow2 ? (code == 0 ? T(0) : (code < 0 ? T(-1) : T(1)) * std::ldexp(T(1), 1 - mag)) : T(code);
    out[i] = mult * scale;
    if (!std::isfinite(out[i])) throw_invalid("'scale' times the code levels overflows");
    if (scale == 0 && code != 0) throw_invalid("'scale' must be a finite positive number, got 0");
  }
}

template void decode_pattern_codes<float>(const uint8_t*, int64_t, int64_t, int, bool, float, float*);
template void decode_pattern_codes<double>(const uint8_t*, int64_t, int64_t, int, bool, double, double*);

}  // namespace patsparse
