#include "codes.h"

#include <cmath>

namespace patsparse {

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
