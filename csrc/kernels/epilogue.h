// The fused output stage shared by every inference op of the core (the 3x3 pattern conv, the sparse
// 1x1 conv and Linear), so BatchNorm, the residual add and a clamp-style activation run while the
// output is still in registers / cache instead of as separate passes over memory:
//
//   out[n, c, p] = clamp(acc[n, c, p] * scale[c] + shift[c] + residual[n, c, p], lo, hi)
//
// acc is the convolution / matmul sum without bias. A null scale means 1, a null shift 0 (a layer's
// bias is passed as shift), a null residual 0; residual has the output's layout. lo / hi default to
// -inf / +inf: ReLU is (0, +inf), ReLU6 and hardtanh(0, 6) are (0, 6). BatchNorm in eval mode folds
// to scale = gamma / sqrt(var + eps), shift = scale * (bias - mean) + beta, leaving the (possibly
// quantized) stored weights untouched. Torch-free.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>

namespace patsparse {

// A clamp bound as the ops take it: +-DBL_MAX stands for no bound (+-inf). The Python layers pass
// that, as an infinite float argument does not survive AOTInductor's package format (it is written
// as a string the loader refuses); the kernels then see +-inf, so the result is the unbounded one.
inline double clamp_bound(double v) {
  constexpr double kMax = std::numeric_limits<double>::max();
  if (v == kMax) return std::numeric_limits<double>::infinity();
  if (v == -kMax) return -std::numeric_limits<double>::infinity();
  return v;
}

struct Epilogue {
  const float* scale = nullptr;     // [C] or null
  const float* shift = nullptr;     // [C] or null
  const float* residual = nullptr;  // output-shaped or null
  float lo = -std::numeric_limits<float>::infinity();
  float hi = std::numeric_limits<float>::infinity();

  // The stage from an op's arguments (null = absent; lo / hi as the schema's doubles): the one place
  // the bindings build it.
  static Epilogue make(const float* scale, const float* shift, const float* residual, double lo, double hi) {
    Epilogue ep;
    ep.scale = scale;
    ep.shift = shift;
    ep.residual = residual;
    ep.lo = static_cast<float>(lo);
    ep.hi = static_cast<float>(hi);
    return ep;
  }
  // A plain bias (may be null): the shift alone.
  static Epilogue bias_only(const float* bias) {
    Epilogue ep;
    ep.shift = bias;
    return ep;
  }

  // True when the stage is the identity plus an optional per-channel shift (a plain bias).
  bool only_shift() const { return !scale && !residual && lo == -hi && hi == std::numeric_limits<float>::infinity(); }

  // Scalar form of the stage for channel c; r is the residual value (0 when there is none).
  float apply(float acc, int64_t c, float r) const {
    float v = acc * (scale ? scale[c] : 1.f) + (shift ? shift[c] : 0.f) + r;
    return std::min(std::max(v, lo), hi);
  }
};

}  // namespace patsparse
