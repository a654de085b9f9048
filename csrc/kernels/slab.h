// Slab geometry shared by the plan drivers (plan_forward in plan.cpp, the backward drivers in
// backward.cpp): the zero-padded, stride-deinterleaved, pitched copy of the input rows a block of
// output rows needs (layout described in plan.h). Internal to the core; torch-free.
#pragma once

#include <cstdint>
#include <vector>

#include "plan.h"

namespace patsparse {
namespace slab {

// Floor of a / b for b >= 1, for every int64 a (no intermediate overflows).
inline int64_t floor_div(int64_t a, int64_t b) {
  const int64_t q = a / b;
  return (a % b != 0 && a < 0) ? q - 1 : q;
}

constexpr int64_t kMaxVecLen = 16;  // widest vector (floats) a kernel table may use

// Slab geometry of one call (see plan.h).
struct Geometry {
  int64_t qy_min, qy_max, qx_min, qx_max;  // tap offsets in units of the stride, over dy, dx = 0..2
  int64_t planes, pitch, block_rows, num_blocks, plane_rows, plane_size, channel_stride, slab_floats;
};

// False when a size overflows or the slab exceeds kPlanMaxSlabFloats. Does not depend on threads.
// budget_floats: the slab size the row blocks aim at (at least one row is always taken).
// The slab stays in L2 while every group reads it: ~384 KB on x86 servers; 160 KB on aarch64, whose
// phone cores have 256 KB (Cortex-A76) to 512 KB of L2, shared with the weights and the output stage.
#if defined(__aarch64__)
constexpr int64_t kSlabBudgetFloats = 40 * 1024;
#else
constexpr int64_t kSlabBudgetFloats = 96 * 1024;
#endif
bool make_geometry(const ConvShape& s, Geometry* out, int64_t budget_floats = kSlabBudgetFloats);
// Fills the slab of output rows [row0, row0 + block_rows) of image `x` (all channels).
void build_slab(const ConvShape& s, const Geometry& g, const float* x, int64_t row0, float* slab);
// 64-byte aligned, grow-only per-thread scratch.
float* thread_scratch(int64_t floats);
// Offset of each (pattern, entry) tap inside one channel's slab, for plan's pattern table.
std::vector<int32_t> tap_offsets(const ExecPlan& plan, const ConvShape& s, const Geometry& g);

}  // namespace slab
}  // namespace patsparse
