#include "admm_step.h"

#include <cmath>

namespace patsparse {

namespace {
constexpr int64_t kGrain = 1 << 15;  // elements per parallel chunk (128 KiB per array)
}

void admm_penalty(float* grad, const float* w, const float* shift, float rho, int64_t n, const ParallelFor& pfor) {
  pfor(n, kGrain, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const float g = grad[i] + rho * w[i];
      grad[i] = g + rho * shift[i];
    }
  });
}

namespace {

// One branch-free loop per flag combination, so the compiler vectorises each of them (the arrays are
// distinct tensors: __restrict__ spares the run-time alias checks).
template <bool kDecay, bool kMomentum, bool kFirst, bool kNesterov>
void sgd_range(float* __restrict__ w, const float* __restrict__ grad, const float* __restrict__ shift,
               float* __restrict__ buf, float rho, const SgdStep& h, int64_t begin, int64_t end) {
  const float sign = h.maximize ? -1.f : 1.f, wd = h.weight_decay, m = h.momentum;
  const float keep = 1.f - h.dampening, neg_lr = -h.lr;
  for (int64_t i = begin; i < end; ++i) {
    const float wi = w[i];
    float g = grad[i] + rho * wi;
    g = sign * (g + rho * shift[i]);
    if constexpr (kDecay) g = g + wd * wi;
    if constexpr (kMomentum) {
      const float b = kFirst ? g : buf[i] * m + keep * g;
      buf[i] = b;
      g = kNesterov ? g + m * b : b;
    }
    w[i] = wi + neg_lr * g;
  }
}

using SgdRange = void (*)(float*, const float*, const float*, float*, float, const SgdStep&, int64_t, int64_t);

template <bool kDecay, bool kMomentum, bool kFirst>
SgdRange pick(bool nesterov) {
  return nesterov ? &sgd_range<kDecay, kMomentum, kFirst, true> : &sgd_range<kDecay, kMomentum, kFirst, false>;
}

template <bool kDecay>
SgdRange pick(bool momentum, bool first, bool nesterov) {
  if (!momentum) return &sgd_range<kDecay, false, false, false>;
  return first ? pick<kDecay, true, true>(nesterov) : pick<kDecay, true, false>(nesterov);
}

}  // namespace

void admm_sgd(float* w, const float* grad, const float* shift, float* momentum_buffer, float rho,
              const SgdStep& h, int64_t n, const ParallelFor& pfor) {
  // The same operations, in the same order, as torch.optim.SGD on the penalised gradient.
  const bool momentum = h.momentum != 0.f;
  const SgdRange range = h.weight_decay != 0.f ? pick<true>(momentum, h.first_step, h.nesterov)
                                               : pick<false>(momentum, h.first_step, h.nesterov);
  pfor(n, kGrain, [=, &h](int64_t begin, int64_t end) { range(w, grad, shift, momentum_buffer, rho, h, begin, end); });
}

namespace {

enum class Decay { kNone, kL2, kDecoupled };

template <Decay kDecay>
void adam_range(float* __restrict__ w, const float* __restrict__ grad, const float* __restrict__ shift,
                float* __restrict__ m, float* __restrict__ v, float rho, const AdamStep& h, int64_t begin, int64_t end) {
  const float sign = h.maximize ? -1.f : 1.f, wd = h.weight_decay, one_minus_b1 = 1.f - h.beta1;
  const float b2 = h.beta2, one_minus_b2 = 1.f - h.beta2, decay = 1.f - h.lr * h.weight_decay;
  const float eps = h.eps, step_size = h.step_size, bc2_sqrt = h.bias_correction2_sqrt;
  for (int64_t i = begin; i < end; ++i) {
    float wi = w[i];
    float g = grad[i] + rho * wi;
    g = sign * (g + rho * shift[i]);
    if constexpr (kDecay == Decay::kL2) g = g + wd * wi;
    if constexpr (kDecay == Decay::kDecoupled) wi = wi * decay;
    const float mi = m[i] + one_minus_b1 * (g - m[i]);  // lerp(m, g, 1 - beta1)
    const float vi = v[i] * b2 + one_minus_b2 * g * g;
    m[i] = mi;
    v[i] = vi;
    const float denom = std::sqrt(vi) / bc2_sqrt + eps;
    w[i] = wi + step_size * (mi / denom);
  }
}

}  // namespace

void admm_adam(float* w, const float* grad, const float* shift, float* exp_avg, float* exp_avg_sq, float rho,
               const AdamStep& h, int64_t n, const ParallelFor& pfor) {
  // The same operations, in the same order, as torch.optim.Adam / AdamW (foreach) on the penalised gradient.
  auto range = &adam_range<Decay::kNone>;
  if (h.weight_decay != 0.f) range = h.decoupled ? &adam_range<Decay::kDecoupled> : &adam_range<Decay::kL2>;
  pfor(n, kGrain, [=, &h](int64_t begin, int64_t end) { range(w, grad, shift, exp_avg, exp_avg_sq, rho, h, begin, end); });
}

}  // namespace patsparse
