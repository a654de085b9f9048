// Fused elementwise steps of the ADMM optimizer (torch-free core; bound in csrc/admm_ops.cpp).
//
// Between two Z updates an ADMM step is the base optimizer's step on the penalised gradient
// g = grad + rho * (w + shift), with shift = U - Z cached at the last Z update. As separate torch
// kernels that is two extra passes over memory per step; here it is one pass (admm_penalty), or no
// extra pass at all when the base optimizer is SGD or Adam / AdamW (admm_sgd, admm_adam: the penalty
// and torch's update in the same loop). Memory bound loops: plain C++ the compiler vectorises.
#pragma once

#include <cstdint>

#include "pattern_conv.h"  // ParallelFor

namespace patsparse {

// grad[i] += rho * w[i] + rho * shift[i]   (the same two roundings as grad.add_(w, rho).add_(shift, rho))
void admm_penalty(float* grad, const float* w, const float* shift, float rho, int64_t n,
                  const ParallelFor& pfor = serial_for);

// torch.optim.SGD's hyper-parameters for one step (same meaning and defaults as there).
struct SgdStep {
  float lr = 0.f, momentum = 0.f, dampening = 0.f, weight_decay = 0.f;
  bool nesterov = false, maximize = false;
  bool first_step = false;  // no momentum buffer yet: it starts as the gradient (torch's clone)
};

// One torch.optim.SGD step of w on g = grad + rho * (w + shift), in one pass; grad is not written.
// momentum_buffer must hold n floats when momentum != 0 (ignored otherwise).
void admm_sgd(float* w, const float* grad, const float* shift, float* momentum_buffer, float rho,
              const SgdStep& h, int64_t n, const ParallelFor& pfor = serial_for);

// torch.optim.Adam / AdamW's hyper-parameters for one step; step_size = -lr / (1 - beta1^t) and
// bias_correction2_sqrt = sqrt(1 - beta2^t) are computed by the caller, as torch computes them.
struct AdamStep {
  float lr = 0.f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.f;
  bool decoupled = false;  // AdamW: w *= 1 - lr * weight_decay; Adam: g += weight_decay * w
  bool maximize = false;
  float step_size = 0.f, bias_correction2_sqrt = 1.f;
};

// One torch.optim.Adam / AdamW step (amsgrad off) of w on g = grad + rho * (w + shift), in one pass.
void admm_adam(float* w, const float* grad, const float* shift, float* exp_avg, float* exp_avg_sq, float rho,
               const AdamStep& h, int64_t n, const ParallelFor& pfor = serial_for);

}  // namespace patsparse
