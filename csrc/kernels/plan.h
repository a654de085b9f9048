// ISA-independent per-layer execution plan for the fp32 pattern-conv forward, and the driver that
// runs it with an ISA-specific micro-kernel table (x86 AVX2 / AVX-512, ARM NEON).
//
// The plan is built once per weight (build_plan validates every index, so the hot loop never
// checks), then reused for every call. It depends only on the compressed weight (not on the input
// shape, not on the ISA):
//   * each filter's kernels are sorted by (input channel, pattern), so a filter streams the input
//     slab in order;
//   * filters whose (channel, pattern) lists are identical (connectivity `group=G`, or equal by
//     chance) are gathered into groups of up to kPlanMaxGroup output channels: one input vector
//     load feeds G FMAs;
//   * per group the weights are packed [run][entry][g] so the G weights of a tap are contiguous;
//   * work_prefix (kept kernels x group size, per group) lets the driver split groups into chunks
//     of equal work for threads.
//
// Execution (plan_forward): per (image, block of output rows, chunk of groups) task, the input rows
// the block needs are copied into a thread-local zero-padded "slab": per input channel, one plane
// per (row phase, column phase) of the stride (stride 2 = even/odd rows/columns deinterleaved), each
// row `pitch` floats wide. In that layout every tap (dy, dx) of every output pixel is a constant
// offset from the pixel's flat index j = row * pitch + col, so a tile of V consecutive vectors of j
// needs no bounds checks, no masks and no per-row logic (columns col >= out_w are junk, computed and
// dropped). Padding, stride and dilation all live in the slab layout and the tap-offset table.
// A micro-kernel computes one tile: G output channels x V vectors of j, over all runs of a group.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "pattern_conv.h"

namespace patsparse {

constexpr int kPlanMaxGroup = 4;   // largest number of output channels sharing one input load
constexpr int kPlanMaxVecs = 16;   // largest tile width (vectors) a micro-kernel table may offer

struct PlanGroup {
  int32_t out_begin = 0;     // first index into ExecPlan::out_order
  int32_t size = 0;          // G: output channels in the group (1..kPlanMaxGroup)
  int32_t run_begin = 0;     // runs [run_begin, run_end) into run_channel / run_pattern
  int32_t run_end = 0;
  int64_t value_offset = 0;  // packed weights of the group: values[value_offset + (run*E + e)*G + g]
};

struct ExecPlan {
  int64_t in_channels = 0, out_channels = 0, entries = 0, num_patterns = 0, nnz = 0;
  std::vector<uint8_t> patterns;      // [K*E] kept positions, copied from the weight
  std::vector<int32_t> out_order;     // [Cout] output channel of each plan position
  std::vector<PlanGroup> groups;
  std::vector<int32_t> run_channel;   // [runs] input channel of each run (a kept kernel shared by the group)
  std::vector<uint8_t> run_pattern;   // [runs] its pattern id
  std::vector<float> values;          // packed weights (see PlanGroup::value_offset)
  std::vector<int64_t> work_prefix;   // [groups+1] prefix sum of runs*G (balancing)
};

// Builds the plan; throws std::invalid_argument with validate_format's message when the arrays are
// invalid for `in_channels`.
std::shared_ptr<const ExecPlan> build_plan(const PatternWeights<float>& w, int64_t in_channels);

// One tile for a micro-kernel. For run r of the group (r in [0, runs)) and pattern entry e:
//   x = src + run_channel[r] * channel_stride + tap_off[run_pattern[r] * entries + e]
//   for v < V, lane l < vec_len:  acc[g][v*vec_len + l] += values[(r*entries + e)*G + g] * x[v*vec_len + l]
// acc starts at bias[g] (or 0 when bias is null) and is stored to out[g * out_stride + i].
// Every read stays inside the slab (plan_forward sizes it); `out` has room for V*vec_len per g.
struct TileArgs {
  const float* src = nullptr;          // slab + j0 (first flat index of the tile)
  int64_t channel_stride = 0;
  const int32_t* tap_off = nullptr;    // [K*E]
  const int32_t* run_channel = nullptr;
  const uint8_t* run_pattern = nullptr;
  const float* values = nullptr;       // the group's packed weights
  int64_t runs = 0;
  int64_t entries = 0;
  const float* bias = nullptr;         // [G] in group order, or null
  float* out = nullptr;
  int64_t out_stride = 0;
};
using TileFn = void (*)(const TileArgs&);

// An ISA's micro-kernels: fn[G][V] computes G output channels x V vectors (null = not offered).
struct MicroKernels {
  int vec_len = 1;                              // floats per vector (16 AVX-512, 8 AVX2, 4 NEON)
  int max_vecs[kPlanMaxGroup + 1] = {};          // widest V offered for each G
  TileFn fn[kPlanMaxGroup + 1][kPlanMaxVecs + 1] = {};
};

// Forward with a plan: same contract as reference_forward (NCHW contiguous input/output, bias may
// be null). `num_threads` is only a hint for how finely to split the work; results do not depend
// on it (every output element is accumulated by one task in a fixed order).
void plan_forward(const ExecPlan& plan, const MicroKernels& mk, const ConvShape& s, const float* input,
                  const float* bias, float* output, const ParallelFor& pfor = serial_for, int num_threads = 1);

// Portable micro-kernels (plain C++ loops, vec_len 4): tests the plan logic on any machine.
const MicroKernels& portable_microkernels();

}  // namespace patsparse
