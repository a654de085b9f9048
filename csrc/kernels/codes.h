// Bit-packed integer streams (torch_patsparse/bitpack.py's layout) and PatternConv2d's quantized
// values. Torch-free.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "checked.h"
#include "error.h"

namespace patsparse {

// Reads `count` values of `width` (1..16) bits packed LSB first (bitpack.pack's layout), after
// checking the byte count and that the padding bits are zero.
class PackedReader {
 public:
  PackedReader(const char* name, const uint8_t* data, int64_t bytes, int64_t count, int width)
      : data_(data), bytes_(bytes), width_(width) {
    int64_t bits;
    if (width < 1 || width > 16) throw_invalid(std::string(name) + ": bit width must be in 1..16");
    if (count < 0 || !mul_ok(count, width, &bits) || bits > INT64_MAX - 7)
      throw_invalid(std::string(name) + " is too long");
    if (bytes != (bits + 7) / 8)
      throw_invalid(std::string(name) + " has " + std::to_string(bytes) + " bytes, expected " + std::to_string((bits + 7) / 8) +
           " for " + std::to_string(count) + " values of " + std::to_string(width) + " bits");
    if (bits % 8 && (data[bytes - 1] >> (bits % 8)))
      throw_invalid(std::string(name) + " has nonzero padding bits after the last value");
  }
  uint32_t operator()(int64_t i) const {
    const int64_t pos = i * width_, byte = pos >> 3;
    uint32_t win = 0;
    for (int k = 0; k < 3 && byte + k < bytes_; ++k) win |= uint32_t(data_[byte + k]) << (8 * k);
    return (win >> (pos & 7)) & ((1u << width_) - 1);
  }

 private:
  const uint8_t* data_;
  int64_t bytes_;
  int width_;
};

// The parameters of a pattern_decode call (torch and ExecuTorch bindings): kept_kernels >= 0, entries
// in 1..9, bits in 1..8, scheme "uniform" or "pow2". Returns the number of values, kept_kernels *
// entries; throws std::invalid_argument naming the bad one (or an int64 overflow).
int64_t pattern_code_count(int64_t kept_kernels, int64_t entries, int64_t bits, std::string_view scheme);

// PatternConv2d's quantized values (quant.dequantize of its stored codes): `count` codes, each
// stored as code + levels in signed_code_width(bits) = max(bits, 2) bits (a kept position may hold
// 0), decoded to code * scale (uniform) or sign(code) * scale * 2^(1 - |code|) (pow2), the same
// roundings as the Python decode. Throws std::invalid_argument on a wrong byte count, nonzero
// padding bits, a code outside +-levels(bits), bits outside 1..8, or a scale that is not finite and
// >= 0 (0 only for all-zero codes) or that overflows T.
template <typename T>
void decode_pattern_codes(const uint8_t* packed, int64_t bytes, int64_t count, int bits, bool pow2, T scale, T* out);

}  // namespace patsparse
