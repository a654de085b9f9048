// Scalar reference and the ISA-independent driver of the depthwise 3x3 kernel (depthwise.h).
#include "depthwise.h"

#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "checked.h"

namespace patsparse {

void check_depthwise_shape(const DepthwiseShape& s) {
  if (s.batch < 0 || s.channels < 0 || s.h < 0 || s.w < 0)
    throw std::invalid_argument("depthwise conv: negative size");
  if (s.stride_h < 1 || s.stride_w < 1) throw std::invalid_argument("depthwise conv: stride must be >= 1");
  int64_t n = 0, hp = 0, wp = 0;  // 2 (h + 2) (w + 2) bounds depthwise_scratch_floats
  if (!product_ok({s.batch, s.channels, s.h, s.w}, &n) || !product_ok({s.channels, 9}, &n) ||
      !add_ok(s.h, 2, &hp) || !add_ok(s.w, 2, &wp) || !product_ok({2, hp, wp}, &n))
    throw std::invalid_argument("depthwise conv: size overflows int64");
  if (s.batch * s.channels > 0 && (s.h < 1 || s.w < 1))
    throw std::invalid_argument("depthwise conv: empty spatial size");
}

template <typename T>
void reference_depthwise3x3(const DepthwiseShape& s, const DepthwiseIo<T>& io, const ParallelFor& pfor) {
  check_depthwise_shape(s);
  const int64_t oh = s.out_h(), ow = s.out_w();
  pfor(s.batch * s.channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const int64_t c = p % s.channels;
      const T* x = io.x + p * s.h * s.w;
      const T bias = io.bias ? io.bias[c] : T(0);
      for (int64_t oy = 0; oy < oh; ++oy) {
        const T* rows[3];
        for (int dy = 0; dy < 3; ++dy) {
          const int64_t iy = oy * s.stride_h - 1 + dy;
          rows[dy] = iy >= 0 && iy < s.h ? x + iy * s.w : nullptr;
        }
        for (int64_t ox = 0; ox < ow; ++ox)
          io.y[(p * oh + oy) * ow + ox] =
              depthwise_epilogue(depthwise_taps(rows, io.weight + c * 9, s.w, ox * s.stride_w), bias, io.lo, io.hi);
      }
    }
  });
}
template void reference_depthwise3x3<float>(const DepthwiseShape&, const DepthwiseIo<float>&, const ParallelFor&);
template void reference_depthwise3x3<double>(const DepthwiseShape&, const DepthwiseIo<double>&, const ParallelFor&);

namespace {

const DepthwiseKernels* kernels_for(Isa isa) {
#if defined(__x86_64__) || defined(_M_X64)
  if (isa == Isa::Avx512) return &avx512_depthwise_kernels();
  if (isa == Isa::Avx2) return &avx2_depthwise_kernels();
#elif defined(__aarch64__)
  if (isa == Isa::Neon) return &neon_depthwise_kernels();
#endif
  (void)isa;
  return nullptr;
}

// Below this many multiply-adds a call runs as one inline task (as spmm.cpp's kMinParallelWork).
constexpr int64_t kMinParallelWork = int64_t(1) << 18;
// Scratch floats a task aims at (the padded input rows and output rows it works on; fits in L2).
constexpr int64_t kScratchFloats = int64_t(1) << 16;

}  // namespace

void depthwise3x3_f32(Isa isa, const DepthwiseShape& s, const DepthwiseIo<float>& io, const ParallelFor& pfor,
                      int num_threads) {
  if (isa != Isa::Scalar && !isa_supported(isa))
    throw std::invalid_argument(std::string("ISA path not available: ") + isa_name(isa));
  check_depthwise_shape(s);
  const DepthwiseKernels* k = kernels_for(isa);
  if (!k) return reference_depthwise3x3<float>(s, io, pfor);
  const int64_t planes = s.batch * s.channels, oh = s.out_h();
  if (planes == 0) return;
  int64_t work = 0;
  if (!product_ok({planes, oh, s.out_w(), 9}, &work)) work = INT64_MAX;
  if (work < kMinParallelWork) num_threads = 1;
  // Row chunks per plane: about 4 tasks a thread (batch 1 with few channels), and a bounded
  // scratch (rows of at most kScratchFloats / 2 padded floats a task).
  const int64_t max_rows = std::max<int64_t>(1, (kScratchFloats / (s.w + 2) - 3) / 2);
  const int64_t chunks = std::clamp<int64_t>(
      std::max((4 * std::max(1, num_threads) + planes - 1) / planes, (oh + max_rows - 1) / max_rows), 1, oh);
  const int64_t tasks = planes * chunks;
  pfor(tasks, num_threads > 1 ? 1 : tasks, [&](int64_t begin, int64_t end) {
    std::vector<float> scratch(static_cast<size_t>(depthwise_scratch_floats(s, (oh + chunks - 1) / chunks)));
    for (int64_t t = begin; t < end; ++t) {
      const int64_t p = t / chunks, c = t % chunks;
      const int64_t oy0 = oh * c / chunks, oy1 = oh * (c + 1) / chunks;
      if (oy0 < oy1) k->rows(s, io, p, oy0, oy1, scratch.data());
    }
  });
}

}  // namespace patsparse
