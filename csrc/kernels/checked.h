// Overflow-checked int64 arithmetic for size computations (shapes come from users: stride 2**32 or
// padding 2**62 must give an error, not undefined behaviour). Torch-free.
#pragma once

#include <cstdint>
#include <initializer_list>

namespace patsparse {

// Each returns false (and leaves *out unspecified) when the exact result does not fit in int64.
inline bool add_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_add_overflow(a, b, out); }
inline bool sub_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_sub_overflow(a, b, out); }
inline bool mul_ok(int64_t a, int64_t b, int64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// Product of non-negative factors; false on overflow.
inline bool product_ok(std::initializer_list<int64_t> factors, int64_t* out) {
  int64_t p = 1;
  for (int64_t f : factors)
    if (!mul_ok(p, f, &p)) return false;
  *out = p;
  return true;
}

}  // namespace patsparse
