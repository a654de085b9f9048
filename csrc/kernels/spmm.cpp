// Scalar reference and the ISA-independent driver of the sparse 1x1 conv / Linear product (spmm.h).
#include "spmm.h"

#include <algorithm>
#include <string>

namespace patsparse {

template <typename T>
void reference_spmm(const CsrView& w, const SpmmIo<T>& io, const ParallelFor& pfor) {
  pfor(io.batch * w.rows, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t b = t / w.rows, o = t % w.rows;
      const T* x = io.x + b * io.x_image;
      const int64_t out = b * io.y_image + o * io.y_chan;
      for (int64_t j = 0; j < io.n; ++j) {
        T acc = 0;
        for (int64_t k = w.row_ptr[o]; k < w.row_ptr[o + 1]; ++k)
          acc += T(w.values[k]) * x[w.column(k) * io.x_chan + j * io.x_col];
        const int64_t at = out + j * io.y_col;
        io.y[at] = spmm_epilogue(io, o, acc, io.residual ? io.residual[at] : T(0));
      }
    }
  });
}
template void reference_spmm<float>(const CsrView&, const SpmmIo<float>&, const ParallelFor&);
template void reference_spmm<double>(const CsrView&, const SpmmIo<double>&, const ParallelFor&);

namespace {

const SpmmKernels* kernels_for(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::Avx512) return &avx512_spmm_kernels();
  if (isa == Isa::Avx2) return &avx2_spmm_kernels();
#elif defined(__aarch64__)
  if (isa == Isa::Neon) return &neon_spmm_kernels();
#endif
  (void)isa;
  return nullptr;
}

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Row chunks per (image, column block) so that there are about 4 tasks a thread (a row chunk is
// the unit that keeps its X block hot in cache; small layers at batch 1 need the row split).
int64_t row_chunks(int64_t rows, int64_t blocks, int num_threads) {
  const int64_t want = 4 * std::max(1, num_threads);
  return std::clamp<int64_t>(ceil_div(want, std::max<int64_t>(blocks, 1)), 1, std::max<int64_t>(rows, 1));
}

// Row c * rows / chunks, down to a multiple of 4 when rows share columns in fours (CsrView::shared4):
// a group is never split, so its rows take the same path whatever the number of threads.
int64_t row_edge(const CsrView& w, int64_t c, int64_t chunks) {
  const int64_t e = w.rows * c / chunks;
  return w.shared4 && c < chunks ? e & ~int64_t(3) : e;
}

// Below this many multiply-adds a product runs as one inline task: waking a second thread costs
// more than it saves (batch-1 Linear heads measured up to 50x slower at 2 threads on a busy machine).
constexpr int64_t kMinParallelWork = int64_t(1) << 18;

}  // namespace

void spmm_f32(Isa isa, const CsrView& w, const SpmmIo<float>& io, const ParallelFor& pfor, int num_threads) {
  if (isa != Isa::Scalar && !isa_supported(isa))
    throw_invalid(std::string("ISA path not available: ") + isa_name(isa));
  if (io.batch <= 0 || io.n <= 0 || w.rows <= 0) return;
  const SpmmKernels* k = kernels_for(isa);
  int64_t work = 0;
  if (!mul_ok(w.row_ptr[w.rows], io.n, &work) || !mul_ok(work, io.batch, &work)) work = INT64_MAX;
  if (work < kMinParallelWork) num_threads = 1;
  if (k && io.x_col == 1 && io.y_col == 1) {
    // The widest tiles win (measured: L1-sized blocks of 2..4 vectors ran 1.1-3x slower; the block
    // of X a task re-reads stays in L2, and wide tiles amortise each nonzero's index / broadcast).
    const int64_t widest = int64_t(k->vec_len) * k->max_vecs;
    const int64_t blocks = ceil_div(io.n, widest);  // column blocks of equal width, in whole vectors
    const int64_t block = ceil_div(ceil_div(io.n, blocks), k->vec_len) * k->vec_len;
    const int64_t chunks = row_chunks(w.rows, io.batch * blocks, num_threads);
    const int64_t tasks = io.batch * blocks * chunks;
    pfor(tasks, num_threads > 1 ? 1 : tasks, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c = t % chunks, bj = t / chunks, b = bj / blocks, j0 = (bj % blocks) * block;
        k->column_tile(w, io, b, row_edge(w, c, chunks), row_edge(w, c + 1, chunks), j0, std::min(block, io.n - j0));
      }
    });
  } else if (k && io.x_chan == 1) {
    const int64_t columns = io.batch * io.n;
    const int64_t chunks = row_chunks(w.rows, columns, num_threads);
    pfor(columns * chunks, num_threads > 1 ? 1 : columns * chunks, [&](int64_t begin, int64_t end) {
      for (int64_t t = begin; t < end; ++t) {
        const int64_t c = t % chunks, bj = t / chunks;
        k->gather_rows(w, io, bj / io.n, bj % io.n, w.rows * c / chunks, w.rows * (c + 1) / chunks);
      }
    });
  } else {
    reference_spmm<float>(w, io, pfor);
  }
}

}  // namespace patsparse
