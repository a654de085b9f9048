// ISA-independent per-layer execution plan for the fp32 pattern-conv forward, and the driver that
// runs it with an ISA-specific micro-kernel table (x86 AVX2 / AVX-512, ARM NEON).
//
// The plan holds only the index structure of a weight (derived from patterns, filter_ptr,
// kernel_channel, kernel_pattern and in_channels; build_plan validates every index, so the hot loop
// never checks). The values are read at call time, never copied into the plan: whatever writes them
// (fused optimizers, .data, numpy) cannot make a cached plan stale. The plan does not depend on the
// input shape or the ISA:
//   * each filter's kernels run in their CSR order (the format's pattern-major order sweeps the
//     input slab once per pattern, channels ascending: forward streams for the prefetchers), so
//     every filter reads its values sequentially, straight from the caller's array;
//   * filters whose (channel, pattern) lists are identical, in the same order (connectivity
//     `group=G`, or equal by chance) are gathered into groups of up to kPlanMaxGroup output
//     channels: one input vector load feeds G FMAs;
//   * work_prefix (kept kernels x group size, per group) lets the driver split groups into chunks
//     of equal work for threads.
// PlanCache finds a plan by the content of the index arrays (a pointer hint, then a hash; a full
// compare against the plan's own arrays decides), so in-place writes to them, freed and reused memory
// and tensors without version counters all behave. Its lifetime policy is lru_cache.h's.
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

#include <array>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "lru_cache.h"
#include "pattern_conv.h"

namespace patsparse {

constexpr int kPlanMaxGroup = 4;   // largest number of output channels sharing one input load
constexpr int kPlanMaxVecs = 16;   // largest tile width (vectors) a micro-kernel table may offer

struct PlanGroup {
  int32_t out_begin = 0;     // first index into ExecPlan::out_order
  int32_t size = 0;          // G: output channels in the group (1..kPlanMaxGroup)
  int32_t run_begin = 0;     // runs [run_begin, run_end) into run_channel / run_pattern
  int32_t run_end = 0;
};

struct ExecPlan {
  int64_t in_channels = 0, out_channels = 0, entries = 0, num_patterns = 0, nnz = 0;
  // With run_channel / run_pattern (each filter's CSR row), these hold the whole content of the
  // index arrays the plan was built from (validated): plan_matches compares it on every lookup.
  std::vector<uint8_t> patterns;      // [K*E] kept positions
  std::vector<int32_t> filter_ptr;    // [Cout+1]
  uint64_t hash = 0;                  // index_hash of the arrays
  int64_t bytes = 0;                  // memory held (for the cache bound)
  std::vector<int32_t> out_order;     // [Cout] output channel of each plan position
  std::vector<PlanGroup> groups;
  std::vector<int32_t> run_channel;   // [runs] input channel of each run (a kept kernel shared by the group)
  std::vector<uint8_t> run_pattern;   // [runs] its pattern id
  std::vector<int64_t> work_prefix;   // [groups+1] prefix sum of runs*G (balancing)
};

// Builds the plan; throws std::invalid_argument with validate_format's message when the arrays are
// invalid for `in_channels`. Reads only the index arrays (w.values may be null).
std::shared_ptr<const ExecPlan> build_plan(const PatternWeights<float>& w, int64_t in_channels);

// Hash of the index arrays, their sizes and in_channels (w.values is not read).
uint64_t index_hash(const PatternWeights<float>& w, int64_t in_channels);
// True when `plan` was built from index arrays equal (element by element) to w's, for in_channels.
bool plan_matches(const ExecPlan& plan, const PatternWeights<float>& w, int64_t in_channels);

// Bounded LRU cache of plans keyed by content (see the header comment). Thread-safe; the content
// compares run outside the lock (plans are immutable and shared).
class PlanCache {
 public:
  explicit PlanCache(size_t max_entries = 64, int64_t max_bytes = int64_t(512) << 20)
      : cache_(max_entries, max_bytes) {}
  // The plan for w's index arrays: a cached one whose arrays equal w's, or a new one (build_plan:
  // throws std::invalid_argument on invalid arrays; nothing is cached then).
  std::shared_ptr<const ExecPlan> get(const PatternWeights<float>& w, int64_t in_channels);
  PlanCacheStats stats() { return cache_.stats(); }
  void clear() { cache_.clear(); }

 private:
  struct Hint {  // where the arrays were last seen; a hint only picks the first plan to compare
    const void* ptr[4] = {};
    int64_t sizes[5] = {};
    bool operator==(const Hint& o) const;
  };
  struct Entry {
    Hint hint;  // updated on a hit, under the cache's lock
    const std::shared_ptr<const ExecPlan> plan;
  };
  static Hint hint_of(const PatternWeights<float>& w, int64_t in_channels);

  LruCache<Entry> cache_;
};

// One tile for a micro-kernel. For run r of the group (r in [0, runs)) and pattern entry e:
//   x = src + run_channel[r] * channel_stride + tap_off[run_pattern[r] * entries + e]
//   for v < V, lane l < vec_len:  acc[g][v*vec_len + l] += values[g][r*entries + e] * x[v*vec_len + l]
// acc starts at bias[g] (or 0 when bias is null) and is stored to out[g * out_stride + i].
// Every read stays inside the slab (plan_forward sizes it); `out` has room for V*vec_len per g.
struct TileArgs {
  const float* src = nullptr;          // slab + j0 (first flat index of the tile)
  int64_t channel_stride = 0;
  const int32_t* tap_off = nullptr;    // [K*E]
  const int32_t* run_channel = nullptr;
  const uint8_t* run_pattern = nullptr;
  const float* values[kPlanMaxGroup] = {};  // per member g: its filter's values (run r at r * entries)
  int64_t runs = 0;
  int64_t entries = 0;
  // Null: every run uses all `entries`. Else (tables with `counts`, for the strided grad_input
  // phases) run r uses only its first counts[run_pattern[r]] entries; values still advance by entries.
  const uint8_t* counts = nullptr;
  const float* bias = nullptr;         // [G] in group order, or null
  float* out = nullptr;
  int64_t out_stride = 0;
};
using TileFn = void (*)(const TileArgs&);

// An ISA's micro-kernels: fn[G][V] computes G output channels x V vectors (null = not offered); its
// name is microkernel_name("patconv", G, V, isa), e.g. f32_patconv_g4v6__avx512.
struct MicroKernels {
  const char* isa = "portable";                 // the ISA suffix of the tiles' names
  int vec_len = 1;                              // floats per vector (16 AVX-512, 8 AVX2, 4 NEON)
  int max_vecs[kPlanMaxGroup + 1] = {};          // widest V offered for each G
  TileFn fn[kPlanMaxGroup + 1][kPlanMaxVecs + 1] = {};
  bool counts = false;                          // the tiles honour TileArgs::counts
};

// XNNPACK-style name of a micro-kernel by operation, tile shape and ISA: "f32_" + op, then "_g<g>"
// when g > 0 and "v<v>" when v > 0, then "__" + isa: f32_patconv_g4v6__avx512 (MicroKernels::fn[4][6]),
// f32_patconv_gradv_g2__avx2 (GradValueKernels::fn[2]), f32_spmm_v8__avx512, f32_spmm_gather__neon.
std::string microkernel_name(const char* op, int g, int v, const char* isa);

// An ISA's tile list, as data: the widest V offered for each G = 1..kPlanMaxGroup ([0] unused).
using TileList = std::array<int, kPlanMaxGroup + 1>;

namespace detail {
template <class K, int G, int... V>
void fill_tile_row(MicroKernels& mk, std::integer_sequence<int, V...>) {
  static_assert(sizeof...(V) >= 1 && sizeof...(V) <= kPlanMaxVecs, "tile list out of range");
  ((mk.fn[G][V + 1] = &K::template tile<G, V + 1>), ...);
  mk.max_vecs[G] = static_cast<int>(sizeof...(V));
}
template <class K, const TileList& list, int... G>
void fill_tiles(MicroKernels& mk, std::integer_sequence<int, G...>) {
  (fill_tile_row<K, G + 1>(mk, std::make_integer_sequence<int, list[G + 1]>{}), ...);
}
}  // namespace detail

// The table of `list`: fn[G][V] = &K::template tile<G, V> for every G and V = 1..list[G]. K is the
// ISA's tile family (a struct with `template <int G, int V> static void tile(const TileArgs&)`);
// instantiate this in the ISA's file, after its `#pragma GCC target(...)`. (C++17: the core also
// builds into the ExecuTorch library.)
template <class K, const TileList& list>
MicroKernels make_microkernels(const char* isa, int vec_len, bool counts) {
  static_assert(list[0] == 0, "TileList[0] is unused");
  MicroKernels mk;
  mk.isa = isa;
  mk.vec_len = vec_len;
  mk.counts = counts;
  detail::fill_tiles<K, list>(mk, std::make_integer_sequence<int, kPlanMaxGroup>{});
  return mk;
}

// Names of the micro-kernels plan_forward(plan, mk, s, ...) calls, in first-use order (a reader's
// and a test's view of the tile choice; empty when !plan_supports(s) or nothing is computed).
std::vector<std::string> plan_forward_tiles(const ExecPlan& plan, const MicroKernels& mk, const ConvShape& s);

// Largest input slab (floats, per thread) plan_forward allocates. Larger geometries (huge stride,
// padding or dilation: the slab holds stride_h * stride_w phase planes per channel) are not planned.
constexpr int64_t kPlanMaxSlabFloats = int64_t(16) << 20;

// True when plan_forward can run shape s: check_shape(s) passes and the slab fits kPlanMaxSlabFloats
// (every size computed with overflow checks). Otherwise use reference_forward.
bool plan_supports(const ConvShape& s);

// Group boundaries of `chunks` consecutive chunks of about equal work (work_prefix): chunk c owns
// groups [begin[c], begin[c+1]); begin has chunks + 1 entries, the last = number of groups.
std::vector<int64_t> equal_work_chunks(const ExecPlan& plan, int64_t chunks);

// Forward with a plan: same contract as reference_forward (NCHW contiguous input/output, epilogue
// `ep` applied to each tile while it is in cache; ep.residual has the output's layout); `values`
// [nnz, E] are the weights of the arrays the plan was built from. `num_threads` is only a hint for
// how finely to split the work; results do not depend on it (every output element is accumulated by
// one task in a fixed order). Throws std::invalid_argument when !plan_supports(s).
void plan_forward(const ExecPlan& plan, const MicroKernels& mk, const ConvShape& s, const float* values,
                  const float* input, const Epilogue& ep, float* output, const ParallelFor& pfor = serial_for,
                  int num_threads = 1);
// The bias-only form (bias may be null): the bias is the epilogue's shift.
inline void plan_forward(const ExecPlan& plan, const MicroKernels& mk, const ConvShape& s, const float* values,
                         const float* input, const float* bias, float* output, const ParallelFor& pfor = serial_for,
                         int num_threads = 1) {
  plan_forward(plan, mk, s, values, input, Epilogue::bias_only(bias), output, pfor, num_threads);
}

// Portable micro-kernels (plain C++ loops, vec_len 4): tests the plan logic on any machine.
const MicroKernels& portable_microkernels();

}  // namespace patsparse
