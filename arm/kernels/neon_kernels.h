// aarch64 NEON micro-kernels for the ISA-independent plan driver (csrc/kernels/plan.h):
// dispatch.cpp runs plan_forward(plan, neon_microkernels(), ...) for Isa::Neon.
#pragma once

#include "csrc/kernels/plan.h"

namespace patsparse {

// fn[G][V]: G output channels (one filter group sharing its input loads) x V float32x4 vectors.
const MicroKernels& neon_microkernels();

}  // namespace patsparse
