// Sparse matrix x dense matrix for the compressed SparseConv2d (1x1) / SparseLinear weights of
// torch_patsparse/nn/sparse.py. Torch-free.
//
// The stored form (bit-packed header, bitmap or relative index, bit-packed codes + scale or fp32
// values) is what the module, its state_dict and its exported TorchScript file hold; nothing
// decoded is kept there. The kernels run on a runtime form, SparseIndex: CSR by output row (the
// row-major order of the stored positions), built from the stored arrays and validated once, then
// cached by their content (SparseIndexCache: a hit needs equal stored arrays, so an in-place write
// to them can never make a cached index stale). It holds no copy of fp32 values: those are read
// from the caller's `values` array at call time. Quantized weights store only codes, so their
// index holds the decoded fp32 values (the only fp32 copy there is): quantized runs at fp32 speed.
//
// One product covers the 1x1 conv and Linear: for every image b, column j < n and row o,
//   Y[b, o, j] = epilogue(sum_k W[o, k] * X[b, k, j])
// with element strides for X and Y (NCHW conv: columns are pixels, contiguous; Linear: X rows are
// samples, channels contiguous). The epilogue is epilogue.h's: clamp(acc * scale[o] + shift[o] +
// residual[b, o, j], lo, hi), residual in Y's layout. Each output element is summed by one task in
// a fixed order: results do not depend on the number of threads.
#pragma once

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "dispatch.h"
#include "lru_cache.h"
#include "pattern_conv.h"

namespace patsparse {

// Borrowed view of one stored weight W[rows, cols] (sparse.py's arrays; see its module docstring).
struct StoredSparse {
  int64_t rows = 0, cols = 0;
  const uint8_t* header = nullptr;
  int64_t header_bytes = 0;
  const uint8_t* index = nullptr;
  int64_t index_bytes = 0;
  const uint8_t* codes = nullptr;
  int64_t codes_bytes = 0;
  int64_t num_values = 0;              // fp32 values stored (nnz unquantized, else 0); read at call time
  const float* code_scale = nullptr;   // [num_code_scale]: 1 when quantized, else 0
  int64_t num_code_scale = 0;
};

// Runtime form of a stored weight (immutable once built; shared by the cache and its callers).
struct SparseIndex {
  int64_t rows = 0, cols = 0, nnz = 0;
  bool quantized = false;
  std::vector<int32_t> row_ptr;   // [rows + 1]
  std::vector<uint16_t> col16;    // [nnz] column of each nonzero, ascending in a row, when cols <= 65536
  std::vector<int32_t> col;       // [nnz] the same for wider weights (exactly one of the two is filled)
  std::vector<float> decoded;     // [nnz] quantized only: the codes' fp32 values
  std::vector<uint8_t> shared4;   // [rows / 4] 1 where rows 4g..4g+3 keep the same columns; empty if none do
  std::vector<uint8_t> stored;    // header | index | codes | code_scale bytes: the cache key
  int64_t stored_sizes[4] = {};
  int64_t bytes = 0;              // memory held
};

// Decodes and validates every stored array (header fields, index length, padding bits and range,
// code range, finite positive scale, value count). Throws std::invalid_argument naming the problem.
std::shared_ptr<const SparseIndex> build_sparse_index(const StoredSparse& s);

using SparseIndexCacheStats = PlanCacheStats;

// Bounded LRU cache (lru_cache.h) of runtime indices keyed by the stored arrays' content. Thread-safe.
class SparseIndexCache {
 public:
  explicit SparseIndexCache(size_t max_entries = 256, int64_t max_bytes = int64_t(512) << 20)
      : cache_(max_entries, max_bytes) {}
  std::shared_ptr<const SparseIndex> get(const StoredSparse& s);  // throws like build_sparse_index
  SparseIndexCacheStats stats() { return cache_.stats(); }
  void clear() { cache_.clear(); }

 private:
  LruCache<const SparseIndex> cache_;
};

// What the kernels read: CSR arrays plus the values (stored fp32 values or SparseIndex::decoded).
// Columns are 16-bit (col16) whenever they fit, which halves the index a layer keeps resident.
struct CsrView {
  int64_t rows = 0, cols = 0;
  const int32_t* row_ptr = nullptr;
  const uint16_t* col16 = nullptr;  // exactly one of col16 / col is set (both null when nnz is 0)
  const int32_t* col = nullptr;
  const float* values = nullptr;
  // [rows / 4] or null: rows 4g..4g+3 keep the same columns (a 4x1 block structure), so the column
  // kernel runs them together, each loaded X vector feeding four rows.
  const uint8_t* shared4 = nullptr;
  int64_t column(int64_t k) const { return col16 ? col16[k] : col[k]; }
};
// `stored_values` (the caller's fp32 array, num_values long) unless the index is quantized.
CsrView csr_view(const SparseIndex& index, const float* stored_values);

// Writes the weight W[rows, cols] densely into `dense` (row-major, rows * cols floats).
void csr_to_dense(const CsrView& w, float* dense);

// Operands of one product (element strides; x and y must not overlap; residual in y's layout).
template <typename T>
struct SpmmIo {
  int64_t batch = 0, n = 0;
  const T* x = nullptr;
  int64_t x_image = 0, x_chan = 0, x_col = 0;
  T* y = nullptr;
  int64_t y_image = 0, y_chan = 0, y_col = 0;
  const T* scale = nullptr;      // [rows] or null (1)
  const T* shift = nullptr;      // [rows] or null (0)
  const T* residual = nullptr;   // y-shaped or null (0)
  T lo = -std::numeric_limits<T>::infinity(), hi = std::numeric_limits<T>::infinity();
};

// The epilogue of one element (epilogue.h's formula; NaN propagates like std::max / std::min).
template <typename T>
inline T spmm_epilogue(const SpmmIo<T>& io, int64_t o, T acc, T r) {
  T v = acc * (io.scale ? io.scale[o] : T(1)) + (io.shift ? io.shift[o] : T(0)) + r;
  v = v < io.lo ? io.lo : v;
  return io.hi < v ? io.hi : v;
}

// Plain loops, any strides (float and double; the weights are fp32 either way).
template <typename T>
void reference_spmm(const CsrView& w, const SpmmIo<T>& io, const ParallelFor& pfor = serial_for);

// fp32 product through `isa` (scalar: the reference). SIMD paths: contiguous columns (x_col ==
// y_col == 1) run the column kernel, contiguous channels (x_chan == 1) the gather kernel, anything
// else the reference. `num_threads` only sets how finely the work is split.
void spmm_f32(Isa isa, const CsrView& w, const SpmmIo<float>& io, const ParallelFor& pfor = serial_for,
              int num_threads = 1);

// An ISA's kernels (spmm_impl.h instantiates them per ISA): column tiles of V vectors are
// microkernel_name("spmm", 0, V, isa) (f32_spmm_v8__avx512), the gather kernel f32_spmm_gather__<isa>.
struct SpmmKernels {
  const char* isa = "";
  int vec_len = 1;
  int max_vecs = 1;  // widest column tile, in vectors
  // Rows [o0, o1) x columns [j0, j0 + len) of image b, len <= vec_len * max_vecs (column layout).
  void (*column_tile)(const CsrView& w, const SpmmIo<float>& io, int64_t b, int64_t o0, int64_t o1, int64_t j0,
                      int64_t len) = nullptr;
  // Rows [o0, o1) of column j of image b (x_chan == 1: a gathered dot product per row).
  void (*gather_rows)(const CsrView& w, const SpmmIo<float>& io, int64_t b, int64_t j, int64_t o0,
                      int64_t o1) = nullptr;
};

#if defined(__x86_64__) || defined(_M_X64)
const SpmmKernels& avx2_spmm_kernels();
const SpmmKernels& avx512_spmm_kernels();
#elif defined(__aarch64__)
const SpmmKernels& neon_spmm_kernels();
#endif

}  // namespace patsparse
