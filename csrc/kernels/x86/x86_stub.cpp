// Placeholder until the SIMD kernels land: reports no SIMD support, so dispatch uses the scalar path.
#include <stdexcept>

#include "x86_kernels.h"

namespace patsparse {
bool cpu_has_avx2_fma() { return false; }
bool cpu_has_avx512() { return false; }
void avx2_forward(const ConvShape&, const PatternWeights<float>&, const float*, const float*, float*, const ParallelFor&) {
  throw std::logic_error("avx2 kernel not built");
}
void avx512_forward(const ConvShape&, const PatternWeights<float>&, const float*, const float*, float*, const ParallelFor&) {
  throw std::logic_error("avx512 kernel not built");
}
}  // namespace patsparse
