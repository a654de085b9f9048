// Run-time choice of the instruction-set path for the fp32 forward kernel.
// PATSPARSE_ISA=scalar|avx2|avx512|neon|auto picks the initial path; set_active_isa changes it
// (tests force every path this way on one machine).
#pragma once

#include <string>

#include "backward.h"
#include "pattern_conv.h"
#include "plan.h"

namespace patsparse {

enum class Isa : int { Scalar = 0, Avx2 = 1, Avx512 = 2, Neon = 3 };

const char* isa_name(Isa isa);
// Parses "scalar", "avx2", "avx512", "neon"; "auto" gives best_isa(). False on an unknown name.
bool parse_isa(const std::string& name, Isa* out);
// Compiled into this build and supported by this CPU.
bool isa_supported(Isa isa);
Isa best_isa();
Isa active_isa();
// Returns false (and changes nothing) when the path is not supported here.
bool set_active_isa(Isa isa);

// fp32 forward through `isa` (must be supported) with the fused output stage `ep` (epilogue.h):
// output = ep(conv(input, W)). Same contract as reference_forward; throws std::invalid_argument when
// check_shape(s) fails or ep's bounds are not lo <= hi (NaN included). `plan` (from build_plan on
// the same index arrays; may be null: then it is built for this call) feeds the SIMD paths, which
// read w.values at call time; the scalar path, and shapes plan_supports rejects, run the reference
// kernel on the raw arrays. `num_threads` is a hint for how finely to split work; results do not
// depend on it.
void forward_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const ExecPlan* plan,
                 const float* input, const Epilogue& ep, float* output, const ParallelFor& pfor = serial_for,
                 int num_threads = 1);
// The bias-only form (bias may be null): the bias is the epilogue's shift.
inline void forward_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const ExecPlan* plan,
                        const float* input, const float* bias, float* output, const ParallelFor& pfor = serial_for,
                        int num_threads = 1) {
  forward_f32(isa, s, w, plan, input, Epilogue::bias_only(bias), output, pfor, num_threads);
}
inline void forward_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const float* input,
                        const float* bias, float* output, const ParallelFor& pfor = serial_for) {
  forward_f32(isa, s, w, nullptr, input, bias, output, pfor, 1);
}

// fp32 backward through `isa`, same contracts as reference_grad_input / reference_grad_values
// (outputs overwritten). `tp` / `plan` (from the caches; may be null: then built for this call) feed
// the SIMD paths, which read w.values at call time; the scalar path and shapes the plan path rejects
// run the reference kernels. Results do not depend on num_threads.
void grad_input_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const TransposedPlan* tp,
                    const float* grad_output, float* grad_input, const ParallelFor& pfor = serial_for,
                    int num_threads = 1);
void grad_values_f32(Isa isa, const ConvShape& s, const PatternWeights<float>& w, const ExecPlan* plan,
                     const float* input, const float* grad_output, float* grad_values,
                     const ParallelFor& pfor = serial_for, int num_threads = 1);

}  // namespace patsparse
