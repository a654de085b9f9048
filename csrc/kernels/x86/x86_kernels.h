// x86 SIMD micro-kernels (AVX2+FMA, AVX-512F) for the plan driver (../plan.h). Each ISA lives in its
// own file compiled with a per-file `#pragma GCC target(...)`, so one build runs on any x86-64;
// dispatch.cpp uses a table only when cpuid says the CPU (and OS) support the ISA.
#pragma once

#include "../backward.h"
#include "../plan.h"

namespace patsparse {

bool cpu_has_avx2_fma();
bool cpu_has_avx512();

const MicroKernels& avx2_microkernels();    // vec_len 8
const MicroKernels& avx512_microkernels();  // vec_len 16
const GradValueKernels& avx2_grad_value_kernels();    // vec_len 8
const GradValueKernels& avx512_grad_value_kernels();  // vec_len 16

}  // namespace patsparse
