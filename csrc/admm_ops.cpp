// Binding of the ADMM optimizer's fused steps (csrc/kernels/admm_step.h): CPU, float32, contiguous.
// torch_patsparse/admm.py calls them when a tensor qualifies and falls back to torch ops otherwise.
#include <torch/library.h>

#include "kernels/admm_step.h"
#include "ops_common.h"

namespace patsparse {
namespace {

void check_same(const at::Tensor& ref, const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(),
              "patsparse admm: ", what, " must be a contiguous float32 CPU tensor");
  TORCH_CHECK(t.sizes() == ref.sizes(), "patsparse admm: ", what, " has shape ", t.sizes(),
              ", the weight has ", ref.sizes());
}

void check_arrays(const at::Tensor& weight, std::initializer_list<std::pair<const at::Tensor*, const char*>> others) {
  check_same(weight, weight, "weight");
  for (const auto& [t, what] : others) check_same(weight, *t, what);
}

// Like torch's in-place ops: autograd and anything keyed on versions sees the write.
void bump(const at::Tensor& t) { t.unsafeGetTensorImpl()->bump_version(); }

void admm_penalty_cpu(at::Tensor grad, const at::Tensor& weight, const at::Tensor& shift, double rho) {
  check_arrays(weight, {{&grad, "grad"}, {&shift, "shift"}});
  admm_penalty(grad.data_ptr<float>(), weight.data_ptr<float>(), shift.data_ptr<float>(), static_cast<float>(rho),
               weight.numel(), aten_parallel_for());
  bump(grad);
}

void admm_sgd_cpu(at::Tensor weight, const at::Tensor& grad, const at::Tensor& shift,
                  const std::optional<at::Tensor>& momentum_buffer, double rho, double lr, double momentum,
                  double dampening, double weight_decay, bool nesterov, bool maximize, bool first_step) {
  check_arrays(weight, {{&grad, "grad"}, {&shift, "shift"}});
  float* buf = nullptr;
  if (momentum != 0) {
    TORCH_CHECK(momentum_buffer.has_value(), "patsparse admm: momentum != 0 needs a momentum_buffer");
    check_same(weight, *momentum_buffer, "momentum_buffer");
    buf = momentum_buffer->data_ptr<float>();
  }
  const auto f = [](double v) { return static_cast<float>(v); };
  const SgdStep h{.lr = f(lr), .momentum = f(momentum), .dampening = f(dampening), .weight_decay = f(weight_decay),
                  .nesterov = nesterov, .maximize = maximize, .first_step = first_step};
  admm_sgd(weight.data_ptr<float>(), grad.data_ptr<float>(), shift.data_ptr<float>(), buf, f(rho), h, weight.numel(),
           aten_parallel_for());
  bump(weight);
  if (buf) bump(*momentum_buffer);
}

void admm_adam_cpu(at::Tensor weight, const at::Tensor& grad, const at::Tensor& shift, at::Tensor exp_avg,
                   at::Tensor exp_avg_sq, double rho, double lr, double beta1, double beta2, double eps,
                   double weight_decay, bool decoupled, bool maximize, double step_size,
                   double bias_correction2_sqrt) {
  check_arrays(weight, {{&grad, "grad"}, {&shift, "shift"}, {&exp_avg, "exp_avg"}, {&exp_avg_sq, "exp_avg_sq"}});
  const auto f = [](double v) { return static_cast<float>(v); };
  const AdamStep h{.lr = f(lr), .beta1 = f(beta1), .beta2 = f(beta2), .eps = f(eps), .weight_decay = f(weight_decay),
                   .decoupled = decoupled, .maximize = maximize, .step_size = f(step_size),
                   .bias_correction2_sqrt = f(bias_correction2_sqrt)};
  admm_adam(weight.data_ptr<float>(), grad.data_ptr<float>(), shift.data_ptr<float>(), exp_avg.data_ptr<float>(),
            exp_avg_sq.data_ptr<float>(), f(rho), h, weight.numel(), aten_parallel_for());
  bump(weight);
  bump(exp_avg);
  bump(exp_avg_sq);
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patsparse, m) {
  m.def("admm_penalty_(Tensor(a!) grad, Tensor weight, Tensor shift, float rho) -> ()");
  m.def("admm_sgd_(Tensor(a!) weight, Tensor grad, Tensor shift, Tensor(b!)? momentum_buffer, float rho, "
        "float lr, float momentum, float dampening, float weight_decay, bool nesterov, bool maximize, "
        "bool first_step) -> ()");
  m.def("admm_adam_(Tensor(a!) weight, Tensor grad, Tensor shift, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, "
        "float rho, float lr, float beta1, float beta2, float eps, float weight_decay, bool decoupled, "
        "bool maximize, float step_size, float bias_correction2_sqrt) -> ()");
}

TORCH_LIBRARY_IMPL(patsparse, CPU, m) {
  m.impl("admm_penalty_", &admm_penalty_cpu);
  m.impl("admm_sgd_", &admm_sgd_cpu);
  m.impl("admm_adam_", &admm_adam_cpu);
}

}  // namespace patsparse
