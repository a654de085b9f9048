// Execution plan of the CUDA pattern-conv kernels: index-only arrays derived once per weight
// *structure* (patterns, filter_ptr, kernel_channel, kernel_pattern) and cached on the device by the
// binding. The values are not part of the plan (they change every training step); kernels read them
// through the original kernel index. Plain C++ (no CUDA, no torch): built on the host, unit-tested by
// csrc/cuda/plan_selftest.cc, which also runs the CUDA kernels' code under a CPU block emulator.
#pragma once

#include <cstdint>
#include <vector>

namespace patsparse {
namespace cuda {

// Output channels computed by one forward thread block. A "filter group" is G consecutive filters
// (G in {1, 2, 4, 8}, dividing kOutBlock) whose kernel lists hold the same (input channel, pattern)
// pairs: one shared-memory load of an input value then feeds G multiply-adds (ps.project.*(group=G)).
constexpr int kOutBlock = 8;

struct HostPlan {
  int group = 1;             // G: largest of 8, 4, 2, 1 such that every aligned G-group shares structure
  int64_t out_channels = 0;  // Cout
  int64_t in_channels = 0;   // Cin
  int64_t nnz = 0;
  int num_groups = 0;        // ceil(Cout / G)
  int num_blocks = 0;        // ceil(Cout / kOutBlock)
  // Forward. Block b owns filters [b*8, b*8+8); blk_chan[blk_chan_ptr[b] : blk_chan_ptr[b+1]] is the
  // sorted union of the input channels its filters use (the channels staged in shared memory, in chunks).
  std::vector<int32_t> blk_chan_ptr, blk_chan;
  // Entries of group g: grp_ptr[g] : grp_ptr[g+1], sorted by slot (= input channel order). For entry i:
  // ent_slot[i] = position of its channel in the block's union list, ent_pattern[i] = pattern id,
  // ent_kernel[i*G + j] = kernel index (row of `values`) of filter g*G+j, or -1 past Cout.
  std::vector<int32_t> grp_ptr, ent_slot, ent_pattern, ent_kernel;
  // grad_input (transposed, gather form): kernels reading input channel c are
  // chan_ptr[c] : chan_ptr[c+1]; t_out = their filter, t_kernel = kernel index, t_pattern = pattern id.
  std::vector<int32_t> chan_ptr, t_out, t_kernel, t_pattern;
  // grad_values: kernel_out[k] = filter of kernel k.
  std::vector<int32_t> kernel_out;
};

// Device-side view (pointers into one packed int32 buffer).
struct DevicePlan {
  int group = 1, num_groups = 0, num_blocks = 0;
  const int32_t* blk_chan_ptr = nullptr;
  const int32_t* blk_chan = nullptr;
  const int32_t* grp_ptr = nullptr;
  const int32_t* ent_slot = nullptr;
  const int32_t* ent_pattern = nullptr;
  const int32_t* ent_kernel = nullptr;
  const int32_t* chan_ptr = nullptr;
  const int32_t* t_out = nullptr;
  const int32_t* t_kernel = nullptr;
  const int32_t* t_pattern = nullptr;
  const int32_t* kernel_out = nullptr;
};

// Validates the arrays (validate_format: every index in range) and builds the plan. Host pointers.
// Throws std::invalid_argument with the validation message (the core's convention, kernels/error.h).
HostPlan build_plan(int64_t num_patterns, int64_t entries, int64_t out_channels, int64_t nnz,
                    const uint8_t* patterns, const int32_t* filter_ptr, const int32_t* kernel_channel,
                    const uint8_t* kernel_pattern, int64_t in_channels);

// All plan arrays concatenated (copied to the device as one buffer) ...
std::vector<int32_t> pack_plan(const HostPlan& plan);
// ... and the view of such a buffer at `base` (device or host pointer).
DevicePlan plan_view(const HostPlan& plan, const int32_t* base);

}  // namespace cuda
}  // namespace patsparse
