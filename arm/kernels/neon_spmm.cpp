// aarch64 NEON sparse 1x1 conv / Linear, depthwise 3x3 and max-pool kernels (4 floats a vector);
// bodies in csrc/kernels/{spmm,depthwise,maxpool}_impl.h, drivers beside them. Tested under qemu
// (arm/test.sh).
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

#include "csrc/kernels/spmm_impl.h"
#include "csrc/kernels/depthwise_impl.h"
#include "csrc/kernels/maxpool_impl.h"

namespace patsparse {
namespace {

struct Simd {
  using Vec = float32x4_t;
  static constexpr int width = 4;
  static Vec zero() { return vdupq_n_f32(0.f); }
  static Vec load(const float* p) { return vld1q_f32(p); }
  static Vec load_part(const float* p, int n) {  // NEON has no masked load: go through a zeroed buffer
    float buf[4] = {0.f, 0.f, 0.f, 0.f};
    std::memcpy(buf, p, sizeof(float) * n);
    return vld1q_f32(buf);
  }
  static void store(float* p, Vec v) { vst1q_f32(p, v); }
  static void store_part(float* p, Vec v, int n) {
    float buf[4];
    vst1q_f32(buf, v);
    std::memcpy(p, buf, sizeof(float) * n);
  }
  static Vec set1(float x) { return vdupq_n_f32(x); }
  static Vec fma(Vec a, Vec b, Vec c) { return vfmaq_f32(c, a, b); }
  static Vec add(Vec a, Vec b) { return vaddq_f32(a, b); }
  static Vec clamp(Vec v, Vec lo, Vec hi) { return vminq_f32(hi, vmaxq_f32(lo, v)); }  // FMAX/FMIN keep NaN
  static Vec max_first(Vec m, Vec v) {  // maxpool.h's max_first per lane (FMAX would turn -0 / +0 ties to +0)
    return vbslq_f32(vorrq_u32(vcgtq_f32(v, m), vmvnq_u32(vceqq_f32(v, v))), v, m);
  }
  static Vec pair_max(Vec a, Vec b) { return max_first(vuzp1q_f32(a, b), vuzp2q_f32(a, b)); }  // lanes 2i, 2i + 1 of a:b
  static float hsum(Vec v) { return vaddvq_f32(v); }
  static Vec gather(const float* base, const int32_t* idx) {
    const float buf[4] = {base[idx[0]], base[idx[1]], base[idx[2]], base[idx[3]]};
    return vld1q_f32(buf);
  }
  static Vec gather16(const float* base, const uint16_t* idx) {
    const float buf[4] = {base[idx[0]], base[idx[1]], base[idx[2]], base[idx[3]]};
    return vld1q_f32(buf);
  }
};

}  // namespace

const SpmmKernels& neon_spmm_kernels() {
  static const SpmmKernels k = spmm_simd::make_kernels<Simd, 8>("neon");
  return k;
}

const DepthwiseKernels& neon_depthwise_kernels() {
  static const DepthwiseKernels k = depthwise_simd::make_kernels<Simd>();
  return k;
}

const MaxPoolKernels& neon_max_pool_kernels() {
  static const MaxPoolKernels k = maxpool_simd::make_kernels<Simd>();
  return k;
}

}  // namespace patsparse
