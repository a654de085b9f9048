// x86 SIMD forward kernels (AVX2+FMA, AVX-512), compiled with per-file target pragmas so one
// build runs on any x86-64; dispatch.cpp calls them only when cpuid says the CPU has the ISA.
#pragma once

#include "../pattern_conv.h"

namespace patsparse {

bool cpu_has_avx2_fma();
bool cpu_has_avx512();

void avx2_forward(const ConvShape& s, const PatternWeights<float>& w, const float* input, const float* bias,
                  float* output, const ParallelFor& pfor);
void avx512_forward(const ConvShape& s, const PatternWeights<float>& w, const float* input, const float* bias,
                    float* output, const ParallelFor& pfor);

}  // namespace patsparse
