#include "dispatch.h"

#include <atomic>
#include <cstdlib>

#if defined(__x86_64__) || defined(_M_X64)
#define PATSPARSE_X86 1
#include "x86/x86_kernels.h"
#elif defined(__aarch64__)
#define PATSPARSE_NEON 1
#include "arm/kernels/neon_kernels.h"
#endif

namespace patsparse {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Neon: return "neon";
  }
  return "unknown";
}

bool parse_isa(const std::string& name, Isa* out) {
  if (name == "auto") { *out = best_isa(); return true; }
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (name == isa_name(isa)) { *out = isa; return true; }
  return false;
}

bool isa_supported(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(PATSPARSE_X86)
    case Isa::Avx2: return cpu_has_avx2_fma();
    case Isa::Avx512: return cpu_has_avx512();
#elif defined(PATSPARSE_NEON)
    case Isa::Neon: return true;
#endif
    default: return false;
  }
}

Isa best_isa() {
  for (Isa isa : {Isa::Avx512, Isa::Avx2, Isa::Neon})
    if (isa_supported(isa)) return isa;
  return Isa::Scalar;
}

namespace {
std::atomic<int>& active_slot() {
  static std::atomic<int> slot([] {
    Isa isa = best_isa();
    if (const char* env = std::getenv("PATSPARSE_ISA")) {
      Isa wanted;
      if (parse_isa(env, &wanted) && isa_supported(wanted)) isa = wanted;
    }
    return static_cast<int>(isa);
  }());
  return slot;
}
}  // namespace

Isa active_isa() { return static_cast<Isa>(active_slot().load()); }

bool set_active_isa(Isa isa) {
  if (!isa_supported(isa)) return false;
  active_slot().store(static_cast<int>(isa));
  return true;
}

namespace {
const MicroKernels& microkernels(Isa isa) {
#if defined(PATSPARSE_X86)
  return isa == Isa::Avx512 ? avx512_microkernels() : avx2_microkernels();
#elif defined(PATSPARSE_NEON)
  (void)isa;
  return neon_microkernels();
#else
  (void)isa;
  return portable_microkernels();
#endif
}
}  // namespace

void forward_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const ExecPlan* plan,
                 const float* input, const Epilogue& ep, float* output, const ParallelFor& pfor, int num_threads) {
  check_shape(s);
  if (!(ep.lo <= ep.hi)) throw_invalid("epilogue bounds must satisfy lo <= hi (and not be NaN)");
  if (isa != Isa::Scalar && !isa_supported(isa))
    throw_invalid(std::string("ISA path not available: ") + isa_name(isa));
  // Geometries whose slab would be huge (stride, padding or dilation in the thousands) run the
  // reference kernel, which needs no scratch: slower, but bounded memory and nn.Conv2d's answer.
  if (isa == Isa::Scalar || !plan_supports(s)) { reference_forward(s, w, input, ep, output, pfor); return; }
  std::shared_ptr<const ExecPlan> local;
  if (!plan) { local = build_plan(w, s.in_channels); plan = local.get(); }
  plan_forward(*plan, microkernels(isa), s, w.values, input, ep, output, pfor, num_threads);
}

void grad_input_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const TransposedPlan* tp,
                    const float* grad_output, float* grad_input, const ParallelFor& pfor, int num_threads) {
  check_shape(s);
  if (isa != Isa::Scalar && !isa_supported(isa))
    throw_invalid(std::string("ISA path not available: ") + isa_name(isa));
  if (isa == Isa::Scalar || !plan_grad_input_supports(s)) {
    reference_grad_input<float>(s, w, grad_output, grad_input, pfor);
    return;
  }
  std::shared_ptr<const TransposedPlan> local;
  if (!tp) { local = build_transposed_plan(build_plan(w, s.in_channels)); tp = local.get(); }
  plan_grad_input(*tp, microkernels(isa), s, w.values, grad_output, grad_input, pfor, num_threads);
}

void grad_values_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const ExecPlan* plan,
                     const float* input, const float* grad_output, float* grad_values, const ParallelFor& pfor,
                     int num_threads) {
  check_shape(s);
  if (isa != Isa::Scalar && !isa_supported(isa))
    throw_invalid(std::string("ISA path not available: ") + isa_name(isa));
  if (isa == Isa::Scalar || !plan_supports(s)) {
    reference_grad_values<float>(s, w, input, grad_output, grad_values, pfor);
    return;
  }
  std::shared_ptr<const ExecPlan> local;
  if (!plan) { local = build_plan(w, s.in_channels); plan = local.get(); }
#if defined(PATSPARSE_X86)
  const GradValueKernels& gk = isa == Isa::Avx512 ? avx512_grad_value_kernels() : avx2_grad_value_kernels();
#else
  const GradValueKernels& gk = portable_grad_value_kernels();
#endif
  plan_grad_values(*plan, gk, s, input, grad_output, grad_values, pfor, num_threads);
}

}  // namespace patsparse
