// Scalar reference and the ISA-independent driver of the max-pool kernel (maxpool.h).
#include "maxpool.h"

#include <algorithm>
#include <stdexcept>
#include <string>

#include "checked.h"

namespace patsparse {

void check_max_pool_shape(const MaxPoolShape& s) {
  if (s.planes < 0 || s.h < 0 || s.w < 0) throw std::invalid_argument("max-pool: negative size");
  if (s.k < 1) throw std::invalid_argument("max-pool: kernel size must be >= 1");
  int64_t n = 0;
  if (!product_ok({s.planes, s.h, s.w}, &n)) throw std::invalid_argument("max-pool: size overflows int64");
  if (s.h < s.k || s.w < s.k)
    throw std::invalid_argument("max-pool: output size is too small (input " + std::to_string(s.h) + "x" +
                                std::to_string(s.w) + ", kernel " + std::to_string(s.k) + ")");
}

template <typename T>
void reference_max_pool2d(const MaxPoolShape& s, const T* x, T* y, const ParallelFor& pfor) {
  check_max_pool_shape(s);
  const int64_t oh = s.out_h(), ow = s.out_w(), k = s.k;
  pfor(s.planes * oh, 1, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const T* in = x + (r / oh * s.h + r % oh * k) * s.w;
      for (int64_t ox = 0; ox < ow; ++ox) {
        const T* win = in + ox * k;
        T m = win[0];
        for (int64_t i = 0; i < k; ++i)
          for (int64_t j = i == 0 ? 1 : 0; j < k; ++j) m = max_first(m, win[i * s.w + j]);
        y[r * ow + ox] = m;
      }
    }
  });
}
template void reference_max_pool2d<float>(const MaxPoolShape&, const float*, float*, const ParallelFor&);
template void reference_max_pool2d<double>(const MaxPoolShape&, const double*, double*, const ParallelFor&);

namespace {

const MaxPoolKernels* kernels_for(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::Avx512) return &avx512_max_pool_kernels();
  if (isa == Isa::Avx2) return &avx2_max_pool_kernels();
#elif defined(__aarch64__)
  if (isa == Isa::Neon) return &neon_max_pool_kernels();
#endif
  (void)isa;
  return nullptr;
}

// Below this many input elements a call runs as one inline task; a task is at least this many.
constexpr int64_t kMinTaskElements = int64_t(1) << 16;

// The first of n items in part t of `parts` even parts (no overflow: n * t is never formed).
int64_t split_point(int64_t n, int64_t parts, int64_t t) { return n / parts * t + std::min(t, n % parts); }

}  // namespace

void max_pool2d_f32(Isa isa, const MaxPoolShape& s, const float* x, float* y, const ParallelFor& pfor,
                    int num_threads) {
  if (isa != Isa::Scalar && !isa_supported(isa))
    throw std::invalid_argument(std::string("ISA path not available: ") + isa_name(isa));
  check_max_pool_shape(s);
  const MaxPoolKernels* k = s.k == 2 ? kernels_for(isa) : nullptr;
  if (!k) return reference_max_pool2d<float>(s, x, y, pfor);
  const int64_t rows = s.planes * s.out_h();
  if (rows == 0 || s.out_w() == 0) return;
  // Output rows per task: about 4 tasks a thread, none smaller than kMinTaskElements of input.
  const int64_t row_elements = 2 * s.w;
  const int64_t min_rows = std::max<int64_t>(1, kMinTaskElements / row_elements);
  const int64_t tasks = std::clamp<int64_t>(rows / min_rows, 1, 4 * std::max(1, num_threads));
  pfor(tasks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t)
      for (int64_t r = split_point(rows, tasks, t), r1 = split_point(rows, tasks, t + 1); r < r1;) {
        const int64_t plane = r / s.out_h(), oy0 = r % s.out_h(), oy1 = std::min(s.out_h(), oy0 + (r1 - r));
        k->rows2(s, x, y, plane, oy0, oy1);
        r += oy1 - oy0;
      }
  });
}

}  // namespace patsparse
