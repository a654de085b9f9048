// C++ test of the fused ADMM optimizer steps (csrc/kernels/admm_step.h), torch-free:
//   every flag combination of admm_sgd (weight decay, momentum first / later step, dampening,
//   nesterov, maximize) and admm_adam (no decay / L2 / decoupled, maximize), three steps from the
//   same state, against a double-precision transcription of torch.optim.SGD / Adam on the penalised
//   gradient g = grad + rho * (w + shift); admm_penalty likewise; sizes 0, 1, odd, and above the
//   parallel grain, serial and through a 3-thread ParallelFor (results must be bit-identical).
// Prints "test_admm_step: N passed, M failed"; exit status 1 on any failure.
#include <cmath>

#include "csrc/kernels/admm_step.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using namespace patsparse_test;

namespace {

std::vector<double> widen(const std::vector<float>& v) { return {v.begin(), v.end()}; }

bool close(const std::vector<float>& got, const std::vector<double>& want) {
  return tolerance_ratio(got, want, 1e-5, 1e-6) <= 1.0;
}

// torch.optim.SGD, one step, in double.
void sgd_reference(std::vector<double>& w, const std::vector<float>& grad, const std::vector<float>& shift,
                   std::vector<double>& buf, double rho, const SgdStep& h) {
  for (size_t i = 0; i < w.size(); ++i) {
    double g = grad[i] + rho * (w[i] + shift[i]);
    if (h.maximize) g = -g;
    if (h.weight_decay != 0.f) g += h.weight_decay * w[i];
    if (h.momentum != 0.f) {
      buf[i] = h.first_step ? g : h.momentum * buf[i] + (1.0 - h.dampening) * g;
      g = h.nesterov ? g + h.momentum * buf[i] : buf[i];
    }
    w[i] -= h.lr * g;
  }
}

// torch.optim.Adam / AdamW (amsgrad off), step t (1-based), in double.
void adam_reference(std::vector<double>& w, const std::vector<float>& grad, const std::vector<float>& shift,
                    std::vector<double>& m, std::vector<double>& v, double rho, const AdamStep& h, int t) {
  const double bc1 = 1.0 - std::pow(double(h.beta1), t), bc2 = 1.0 - std::pow(double(h.beta2), t);
  for (size_t i = 0; i < w.size(); ++i) {
    double g = grad[i] + rho * (w[i] + shift[i]);
    if (h.maximize) g = -g;
    if (h.weight_decay != 0.f && !h.decoupled) g += h.weight_decay * w[i];
    if (h.weight_decay != 0.f && h.decoupled) w[i] *= 1.0 - double(h.lr) * h.weight_decay;
    m[i] = h.beta1 * m[i] + (1.0 - h.beta1) * g;
    v[i] = h.beta2 * v[i] + (1.0 - h.beta2) * g * g;
    w[i] -= h.lr / bc1 * m[i] / (std::sqrt(v[i]) / std::sqrt(bc2) + h.eps);
  }
}

const int64_t kSizes[] = {0, 1, 7, 33, 100003};  // 100003: several chunks of the 32768-element grain

void test_penalty(Counter& t) {
  for (const int64_t n : kSizes) {
    const auto w = random_input(n, 11), shift = random_input(n, 12), grad0 = random_input(n, 13);
    const float rho = 0.37f;
    auto serial = grad0, threaded = grad0;
    admm_penalty(serial.data(), w.data(), shift.data(), rho, n);
    admm_penalty(threaded.data(), w.data(), shift.data(), rho, n, threaded_for);
    std::vector<double> want(n);
    for (int64_t i = 0; i < n; ++i) want[i] = grad0[i] + double(rho) * w[i] + double(rho) * shift[i];
    t.check(close(serial, want), "admm_penalty n=" + std::to_string(n));
    t.check(serial == threaded, "admm_penalty threaded == serial n=" + std::to_string(n));
  }
}

void test_sgd(Counter& t) {
  for (const int64_t n : kSizes)
    for (int flags = 0; flags < 16; ++flags) {
      SgdStep h;
      h.lr = 0.05f;
      h.weight_decay = (flags & 1) ? 1e-2f : 0.f;
      h.momentum = (flags & 2) ? 0.9f : 0.f;
      h.dampening = (flags & 4) ? 0.1f : 0.f;
      h.nesterov = (flags & 8) && h.momentum != 0.f && h.dampening == 0.f;  // torch's own restriction
      h.maximize = (flags & 4) != 0;
      const float rho = 0.5f;
      auto w = random_input(n, 21 + flags), buf = std::vector<float>(n, 0.f);
      auto wt = w, buft = buf;
      auto wd = widen(w), bufd = widen(buf);
      const auto shift = random_input(n, 5);
      for (int step = 0; step < 3; ++step) {
        const auto grad = random_input(n, 100 + step);
        h.first_step = step == 0;
        admm_sgd(w.data(), grad.data(), shift.data(), buf.data(), rho, h, n);
        admm_sgd(wt.data(), grad.data(), shift.data(), buft.data(), rho, h, n, threaded_for);
        sgd_reference(wd, grad, shift, bufd, rho, h);
      }
      const std::string what = "admm_sgd flags=" + std::to_string(flags) + " n=" + std::to_string(n);
      t.check(close(w, wd), what + " weights");
      t.check(h.momentum == 0.f || close(buf, bufd), what + " momentum buffer");
      t.check(w == wt && buf == buft, what + " threaded == serial");
    }
}

void test_adam(Counter& t) {
  for (const int64_t n : kSizes)
    for (int flags = 0; flags < 6; ++flags) {
      AdamStep h;
      h.lr = 1e-2f;
      h.weight_decay = (flags % 3 == 0) ? 0.f : 0.05f;
      h.decoupled = flags % 3 == 2;
      h.maximize = flags >= 3;
      const float rho = 0.25f;
      auto w = random_input(n, 31 + flags), m = std::vector<float>(n, 0.f), v = m;
      auto wt = w, mt = m, vt = v;
      auto wd = widen(w), md = widen(m), vd = widen(v);
      const auto shift = random_input(n, 6);
      for (int step = 1; step <= 3; ++step) {
        const auto grad = random_input(n, 200 + step);
        h.step_size = -h.lr / (1.f - std::pow(h.beta1, float(step)));  // as torch computes them
        h.bias_correction2_sqrt = std::sqrt(1.f - std::pow(h.beta2, float(step)));
        admm_adam(w.data(), grad.data(), shift.data(), m.data(), v.data(), rho, h, n);
        admm_adam(wt.data(), grad.data(), shift.data(), mt.data(), vt.data(), rho, h, n, threaded_for);
        adam_reference(wd, grad, shift, md, vd, rho, h, step);
      }
      const std::string what = "admm_adam flags=" + std::to_string(flags) + " n=" + std::to_string(n);
      t.check(close(w, wd), what + " weights");
      t.check(close(m, md) && close(v, vd), what + " moments");
      t.check(w == wt && m == mt && v == vt, what + " threaded == serial");
    }
}

}  // namespace

int main() {
  Counter t;
  test_penalty(t);
  test_sgd(t);
  test_adam(t);
  return t.finish("test_admm_step");
}
