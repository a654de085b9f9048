// aarch64 NEON forward kernel over the same format as the x86 kernels.
#pragma once

#include "csrc/kernels/pattern_conv.h"

namespace patsparse {

void neon_forward(const ConvShape& s, const PatternWeights<float>& w, const float* input, const float* bias,
                  float* output, const ParallelFor& pfor);

}  // namespace patsparse
