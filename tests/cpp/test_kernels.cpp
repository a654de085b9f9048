// C++ tests of the torch-free kernel core (no torch, no Python):
//   1. the scalar reference (float and double) against a naive dense conv on the shape matrix
//      (stride 1/2, padding 0/1/2, dilation 1/2, odd sizes, batch 0/1/3, bias on/off, grouped and
//      ungrouped weights with values = int8 codes * scale), plus edge shapes (stride 3, asymmetric
//      geometry, 1..9 entries per pattern, empty filters, fully dense filters);
//   2. every SIMD path this build and CPU support (AVX2 / AVX-512 on x86-64, NEON on aarch64)
//      against the reference on the same cases, serial and through a multi-threaded ParallelFor,
//      checking that every output element is written and nothing outside the output is (the
//      threaded run uses a plan built up front and a thread hint of 3, like the op's cached plan);
//   3. validate_format on broken arrays;
//   4. the input slab (slab.h build_slab) element by element against its layout (plan.h), for
//      strides 1-3, padding 0-3 and dilation 1-2 per axis, every row block.
// Prints "test_kernels: N passed, M failed"; exit status 1 on any failure.
#include "csrc/kernels/dispatch.h"
#include "csrc/kernels/slab.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using namespace patsparse_test;

namespace {

struct Case {
  ConvShape s;
  Compressed w;
  bool bias;
  std::string name;
};

std::string describe(const ConvShape& s, int64_t group, int64_t entries, bool bias) {
  char buf[256];
  std::snprintf(buf, sizeof buf, "N=%lld Cin=%lld %lldx%lld Cout=%lld stride=(%lld,%lld) pad=(%lld,%lld) dil=(%lld,%lld) "
                "group=%lld E=%lld bias=%d", (long long)s.batch, (long long)s.in_channels, (long long)s.in_h,
                (long long)s.in_w, (long long)s.out_channels, (long long)s.stride_h, (long long)s.stride_w,
                (long long)s.pad_h, (long long)s.pad_w, (long long)s.dil_h, (long long)s.dil_w, (long long)group,
                (long long)entries, int(bias));
  return buf;
}

void run_case(Counter& t, const ConvShape& s, const Compressed& w, bool with_bias, const std::string& name) {
  static uint64_t input_seed = 77;
  const uint64_t seed = input_seed += 2;
  const auto x = random_input(s.batch * s.in_channels * s.in_h * s.in_w, seed);
  const auto bias = random_input(s.out_channels, seed + 1);
  const float* b = with_bias ? bias.data() : nullptr;
  const size_t out_n = static_cast<size_t>(s.batch * s.out_channels * s.out_h * s.out_w);

  const auto dense = dense_conv(s, w.dense, x.data(), b);
  std::vector<float> ref(out_n, NAN);
  reference_forward<float>(s, w.view(), x.data(), b, ref.data());
  t.check(tolerance_ratio(ref, dense, 1e-5, 1e-5) <= 1.0, "reference<float> vs dense: " + name);

  // double reference: same weights and input, widened
  std::vector<double> xd(x.begin(), x.end()), vd(w.values.begin(), w.values.end()), bd(bias.begin(), bias.end());
  PatternWeights<double> wd;
  const auto wf = w.view();
  wd.num_patterns = wf.num_patterns; wd.entries = wf.entries; wd.out_channels = wf.out_channels; wd.nnz = wf.nnz;
  wd.patterns = wf.patterns; wd.filter_ptr = wf.filter_ptr; wd.kernel_channel = wf.kernel_channel;
  wd.kernel_pattern = wf.kernel_pattern; wd.values = vd.data();
  std::vector<double> refd(out_n, NAN);
  reference_forward<double>(s, wd, xd.data(), with_bias ? bd.data() : nullptr, refd.data());
  t.check(tolerance_ratio(refd, dense, 1e-12, 1e-12) <= 1.0, "reference<double> vs dense: " + name);

  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
    if (!isa_supported(isa)) continue;
    for (int threaded = 0; threaded < 2; ++threaded) {
      // Guard zones around the output catch writes outside it; NaN fill catches unwritten elements.
      const size_t guard = 64;
      std::vector<float> buf(out_n + 2 * guard, -12345.f);
      std::fill(buf.begin() + guard, buf.begin() + guard + out_n, NAN);
      if (threaded) {  // a plan built once (as the op caches it), thread hint 3: work split into chunks
        const auto plan = build_plan(w.view(), s.in_channels);
        forward_f32(isa, s, w.view(), plan.get(), x.data(), b, buf.data() + guard, threaded_for, 3);
      } else {
        forward_f32(isa, s, w.view(), x.data(), b, buf.data() + guard, serial_for);
      }
      std::vector<float> got(buf.begin() + guard, buf.begin() + guard + out_n);
      bool guards_ok = true;
      for (size_t i = 0; i < guard; ++i) guards_ok &= buf[i] == -12345.f && buf[guard + out_n + i] == -12345.f;
      const std::string what = std::string(isa_name(isa)) + (threaded ? " threaded" : "") + " vs reference: " + name;
      t.check(tolerance_ratio(got, ref, 1e-5, 1e-5) <= 1.0, what);
      t.check(guards_ok, "writes outside the output: " + what);
    }
  }
}

void shape_matrix(Counter& t) {
  const int64_t hw[][2] = {{7, 9}, {11, 19}, {5, 37}, {9, 16}};
  const int64_t ch[][2] = {{5, 7}, {3, 9}, {8, 6}};
  uint64_t seed = 1;
  int idx = 0;
  for (int64_t stride : {1, 2})
    for (int64_t pad : {0, 1, 2})
      for (int64_t dil : {1, 2})
        for (int64_t batch : {0, 1, 3})
          for (int bias = 0; bias < 2; ++bias)
            for (int64_t group : {1, 2, 4}) {
              const int64_t* size = hw[idx % 4];
              const int64_t* c = ch[idx % 3];
              ++idx;
              const ConvShape s = make_shape(batch, c[0], size[0], size[1], c[1], stride, pad, dil);
              if (s.out_h <= 0 || s.out_w <= 0) continue;
              const Compressed w = random_weights(s.out_channels, s.in_channels, 0.6, group, seed++);
              run_case(t, s, w, bias, describe(s, group, 4, bias));
            }
}

void edge_cases(Counter& t) {
  uint64_t seed = 1000;
  // stride 3, larger padding, wide rows (tail handling of wide tiles)
  for (int64_t w : {1, 3, 15, 16, 17, 33, 64}) {
    for (int64_t stride : {1, 2, 3}) {
      const ConvShape s = make_shape(2, 4, 6, w, 5, stride, 1, 1);
      if (s.out_h <= 0 || s.out_w <= 0) continue;
      const Compressed cw = random_weights(5, 4, 0.7, stride == 1 ? 2 : 1, seed++);
      run_case(t, s, cw, true, describe(s, stride == 1 ? 2 : 1, 4, true));
    }
  }
  // asymmetric stride / padding / dilation
  {
    ConvShape s = make_shape(2, 3, 13, 21, 6, 1, 0, 1);
    s.stride_h = 1; s.stride_w = 2; s.pad_h = 2; s.pad_w = 0; s.dil_h = 2; s.dil_w = 1;
    s.out_h = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
    s.out_w = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
    run_case(t, s, random_weights(6, 3, 0.8, 3, seed++), true, describe(s, 3, 4, true));
    std::swap(s.stride_h, s.stride_w); std::swap(s.pad_h, s.pad_w); std::swap(s.dil_h, s.dil_w);
    s.out_h = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
    s.out_w = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
    run_case(t, s, random_weights(6, 3, 0.8, 1, seed++), false, describe(s, 1, 4, false));
  }
  // 1, 2, 5 and 9 entries per pattern
  const std::vector<std::pair<int64_t, std::vector<uint8_t>>> sets = {
      {1, {4, 0, 8}},
      {2, {4, 1, 3, 4, 8, 0}},
      {5, {0, 1, 3, 4, 8, 4, 5, 7, 8, 2}},
      {9, {0, 1, 2, 3, 4, 5, 6, 7, 8, 8, 7, 6, 5, 4, 3, 2, 1, 0}},
  };
  for (const auto& [e, pats] : sets)
    for (int64_t group : {1, 3}) {
      const ConvShape s = make_shape(2, 6, 10, 23, 7, 1, 1, 1);
      run_case(t, s, random_weights(7, 6, 0.5, group, seed++, pats, e), true, describe(s, group, e, true));
      const ConvShape s2 = make_shape(1, 6, 10, 23, 7, 2, 2, 2);
      run_case(t, s2, random_weights(7, 6, 0.5, group, seed++, pats, e), false, describe(s2, group, e, false));
    }
  // empty filters (connectivity removed everything), fully kept filters, single channel / pixel
  run_case(t, make_shape(2, 4, 8, 8, 6, 1, 1, 1), random_weights(6, 4, 0.0, 1, seed++), true, "all filters empty, bias");
  run_case(t, make_shape(2, 4, 8, 8, 6, 1, 1, 1), random_weights(6, 4, 1.0, 2, seed++), false, "all kernels kept");
  run_case(t, make_shape(1, 1, 3, 3, 1, 1, 0, 1), random_weights(1, 1, 1.0, 1, seed++), true, "1x1 output");
  run_case(t, make_shape(1, 2, 1, 1, 2, 1, 1, 1), random_weights(2, 2, 1.0, 1, seed++), true, "1x1 input, pad 1");
  run_case(t, make_shape(1, 16, 7, 7, 32, 1, 1, 1), random_weights(32, 16, 0.3, 4, seed++), true, "16->32 7x7 group 4");
  run_case(t, make_shape(2, 32, 16, 16, 24, 1, 1, 1), random_weights(24, 32, 0.25, 1, seed++), false, "32->24 16x16");
}

void format_checks(Counter& t) {
  Compressed w = random_weights(4, 3, 1.0, 1, 7);
  const auto err = [&](const Compressed& c, int64_t cin) { return error_of([&] { validate(c.view(), cin); }); };
  t.check(err(w, 3).empty(), "valid weights validate");
  t.check(!err(w, 2).empty(), "kernel_channel >= in_channels rejected");
  { auto c = w; c.kernel_channel[1] = -1; t.check(!err(c, 3).empty(), "negative kernel_channel rejected"); }
  { auto c = w; c.kernel_pattern[2] = 8; t.check(!err(c, 3).empty(), "pattern id >= K rejected"); }
  { auto c = w; c.patterns[5] = 9; t.check(!err(c, 3).empty(), "position 9 rejected"); }
  { auto c = w; c.patterns[5] = c.patterns[4]; t.check(!err(c, 3).empty(), "repeated position rejected"); }
  { auto c = w; c.filter_ptr[0] = 1; t.check(!err(c, 3).empty(), "filter_ptr[0] != 0 rejected"); }
  { auto c = w; std::swap(c.filter_ptr[1], c.filter_ptr[2]); t.check(!err(c, 3).empty(), "decreasing filter_ptr rejected"); }
  { auto c = w; c.filter_ptr.back() -= 1; t.check(!err(c, 3).empty(), "filter_ptr[-1] != nnz rejected"); }
  // PyTorch's output size, also when the dilated kernel does not fit (floor, not truncation, of a
  // negative span: 0 outputs, so the op reports "too small" instead of computing garbage).
  t.check(conv_out_size(8, 1, 1, 1) == 8 && conv_out_size(8, 1, 1, 2) == 4 && conv_out_size(9, 0, 2, 2) == 3,
          "conv_out_size on valid shapes");
  t.check(conv_out_size(1, 0, 1, 3) == 0 && conv_out_size(2, 0, 1, 1) == 0 && conv_out_size(4, 0, 2, 2) == 0,
          "conv_out_size is 0 when the kernel does not fit");
}

// Every slab element: plane (a, b) of channel c, row rr, column cc holds input row
// (row0 + rr + qy_min) * stride_h + a, column (cc + qx_min) * stride_w + b, or 0 outside the image;
// the plane's last row (read only by vectors past the block) and its tail (alignment padding) are 0.
// Small row budgets force several row blocks.
void slab_layout(Counter& t) {
  Rng rng(515);
  for (int i = 0; i < 60; ++i) {
    ConvShape s;
    s.batch = 1; s.out_channels = 1;
    s.in_channels = 1 + rng.below(3);
    s.in_h = 1 + rng.below(12); s.in_w = 1 + rng.below(23);
    s.stride_h = 1 + rng.below(3); s.stride_w = 1 + rng.below(3);
    s.pad_h = rng.below(4); s.pad_w = rng.below(4);
    s.dil_h = 1 + rng.below(2); s.dil_w = 1 + rng.below(2);
    s.out_h = patsparse::conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
    s.out_w = patsparse::conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
    if (s.out_h <= 0 || s.out_w <= 0) { --i; continue; }
    patsparse::slab::Geometry g;
    const int64_t budget = i % 2 ? 1 : 1 << 20;  // one row per block, or one block
    if (!patsparse::slab::make_geometry(s, &g, budget)) { t.check(false, "make_geometry on a small shape"); continue; }
    const auto x = random_input(s.in_channels * s.in_h * s.in_w, 600 + i);
    std::vector<float> slab(static_cast<size_t>(g.slab_floats), NAN);
    bool ok = true;
    for (int64_t blk = 0; blk < g.num_blocks; ++blk) {
      const int64_t row0 = blk * g.block_rows;
      std::fill(slab.begin(), slab.end(), NAN);
      patsparse::slab::build_slab(s, g, x.data(), row0, slab.data());
      for (int64_t c = 0; c < s.in_channels; ++c)
        for (int64_t a = 0; a < s.stride_h; ++a)
          for (int64_t b = 0; b < s.stride_w; ++b) {
            const float* plane = slab.data() + c * g.channel_stride + (a * s.stride_w + b) * g.plane_size;
            for (int64_t k = 0; k < g.plane_size; ++k) {
              const int64_t rr = k / g.pitch, cc = k % g.pitch;
              const int64_t ih = (row0 + rr + g.qy_min) * s.stride_h + a, iw = (cc + g.qx_min) * s.stride_w + b;
              float want = 0.f;
              if (rr < g.plane_rows - 1 && ih >= 0 && ih < s.in_h && iw >= 0 && iw < s.in_w)
                want = x[(c * s.in_h + ih) * s.in_w + iw];
              ok = ok && plane[k] == want;
            }
          }
    }
    char name[160];
    std::snprintf(name, sizeof name, "slab layout #%d: Cin=%lld %lldx%lld stride=(%lld,%lld) pad=(%lld,%lld) dil=(%lld,%lld) blocks=%lld",
                  i, (long long)s.in_channels, (long long)s.in_h, (long long)s.in_w, (long long)s.stride_h,
                  (long long)s.stride_w, (long long)s.pad_h, (long long)s.pad_w, (long long)s.dil_h, (long long)s.dil_w,
                  (long long)g.num_blocks);
    t.check(ok, name);
  }
}

}  // namespace

int main() {
  Counter t;
  std::printf("ISA paths tested:");
  for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon})
    if (isa_supported(isa)) std::printf(" %s", isa_name(isa));
  std::printf("\n");
  shape_matrix(t);
  edge_cases(t);
  format_checks(t);
  slab_layout(t);
  return t.finish("test_kernels");
}
