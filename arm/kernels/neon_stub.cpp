// Placeholder until the NEON kernel lands.
#include <stdexcept>

#include "neon_kernels.h"

namespace patsparse {
void neon_forward(const ConvShape&, const PatternWeights<float>&, const float*, const float*, float*, const ParallelFor&) {
  throw std::logic_error("neon kernel not built");
}
}  // namespace patsparse
