// Backward of the fp32 pattern conv on the plan path (the forward's slab layout and micro-kernels).
//
// grad_input is a transposed conv. At stride 1 it is a forward pattern conv of grad_output: kernel
// (o, c, pattern P) becomes kernel (c, o, P flipped: position p -> 8 - p), padding 2 * dilation -
// padding, same dilation. At stride s > 1, grad_output is spread onto a zero grid (row oh at
// oh * s), which turns the transposed conv into the same stride-1 forward. plan_forward then runs it
// with the ISA's micro-kernels. The transposed index structure (TransposedPlan) is derived from a
// forward plan only, so it is cached by the forward plan's identity (which PlanCache finds by content):
// it never holds values; they are gathered into the transposed order on every call.
//
// grad_values: per kept kernel k = (o, c) and entry e at tap (dy, dx),
//   grad[k, e] = sum over images and output pixels of grad_output[n, o, p] * input[n, c, tap(p)].
// In the forward's slab layout every tap is a constant offset from the pixel's flat index
// j = row * pitch + col; grad_output is copied into the same pitched layout with zeros in the junk
// columns (col >= out_w), so each (kernel, entry) is one contiguous dot product over j. A grad tile
// does all runs of one plan group: each slab vector load feeds the G members' FMAs (group-G sharing).
// Tasks are chunks of groups; each loops over (image, row block) in a fixed order, so every gradient
// element is accumulated by one task in an order that does not depend on the thread count.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "plan.h"

namespace patsparse {

// Index structure of the transposed conv of a forward plan: Cin filters over Cout channels.
struct TransposedPlan {
  std::shared_ptr<const ExecPlan> forward;  // the plan it was derived from (kept alive: it is the key)
  std::shared_ptr<const ExecPlan> plan;     // transposed: filter c lists (o, flipped pattern), o ascending
  std::vector<int32_t> perm;                // [nnz] transposed kernel t is forward kernel perm[t]
};

std::shared_ptr<const TransposedPlan> build_transposed_plan(const std::shared_ptr<const ExecPlan>& forward);

// Bounded LRU (lru_cache.h) of transposed plans keyed by the forward plan object (identity: the
// forward plan is immutable and is found by content, so equal keys mean equal index arrays; the entry
// keeps it alive, so its address cannot be reused while cached). Thread-safe.
class TransposedPlanCache {
 public:
  explicit TransposedPlanCache(size_t max_entries = 64, int64_t max_bytes = int64_t(512) << 20)
      : cache_(max_entries, max_bytes) {}
  std::shared_ptr<const TransposedPlan> get(const std::shared_ptr<const ExecPlan>& forward);
  PlanCacheStats stats() { return cache_.stats(); }
  void clear() { cache_.clear(); }

 private:
  LruCache<const TransposedPlan> cache_;
};

// True when plan_grad_input can run shape s (the forward's shape): padding <= 2 * dilation on both
// axes, and the transposed forward (and, when strided, the zero-spread grad_output) fits the plan
// path's limits. Otherwise use reference_grad_input.
bool plan_grad_input_supports(const ConvShape& s);

// grad_input [N, Cin, H, W] (overwritten) from grad_output [N, Cout, OH, OW], NCHW contiguous;
// `values` are the forward kernels' [nnz, E]. Throws std::invalid_argument when unsupported.
void plan_grad_input(const TransposedPlan& tp, const MicroKernels& mk, const ConvShape& s, const float* values,
                     const float* grad_output, float* grad_input, const ParallelFor& pfor = serial_for,
                     int num_threads = 1);

// One grad tile: all runs of one plan group over `images` slabs of nvec vectors of the flat index j.
// For run r, entry e, member m:  grad[m][r * entries + e] += sum over i < images, j < nvec * vec_len of
//   gout[m][i * gout_stride + j] * src[i * src_stride + run_channel[r] * channel_stride + tap_off[...] + j]
// (tap_off[run_pattern[r] * entries + e]); one horizontal sum per (run, entry, member) and call.
struct GradTileArgs {
  const float* src = nullptr;  // slab of image 0 (j = 0)
  int64_t images = 1, src_stride = 0, gout_stride = 0;
  int64_t channel_stride = 0;
  const int32_t* tap_off = nullptr;
  const int32_t* run_channel = nullptr;
  const uint8_t* run_pattern = nullptr;
  int64_t runs = 0, entries = 0, nvec = 0;
  const float* gout[kPlanMaxGroup] = {};  // member m's grad_output block, pitched, zero junk columns
  float* grad[kPlanMaxGroup] = {};        // member m's gradient values (its filter's CSR row)
};
using GradTileFn = void (*)(const GradTileArgs&);

// fn[G] for G = 1..kPlanMaxGroup is microkernel_name("patconv_gradv", G, 0, isa), e.g. f32_patconv_gradv_g4__avx512.
struct GradValueKernels {
  const char* isa = "portable";
  int vec_len = 1;
  GradTileFn fn[kPlanMaxGroup + 1] = {};
};

// Portable grad tiles (plain C++, vec_len 4): the NEON and generic builds use them.
const GradValueKernels& portable_grad_value_kernels();

// grad_values [nnz, E] (overwritten) for the index arrays `plan` was built from. Input and
// grad_output NCHW contiguous. Throws std::invalid_argument when !plan_supports(s).
void plan_grad_values(const ExecPlan& plan, const GradValueKernels& gk, const ConvShape& s, const float* input,
                      const float* grad_output, float* grad_values, const ParallelFor& pfor = serial_for,
                      int num_threads = 1);

}  // namespace patsparse
