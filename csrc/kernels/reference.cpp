#include "pattern_conv.h"

#include <algorithm>
#include <cstring>
#include <vector>

namespace patsparse {

void serial_for(int64_t n, int64_t /*grain*/, const std::function<void(int64_t, int64_t)>& body) {
  if (n > 0) body(0, n);
}

void validate_format(int64_t num_patterns, int64_t entries, int64_t out_channels, int64_t nnz,
                     const uint8_t* patterns, const int32_t* filter_ptr,
                     const int32_t* kernel_channel, const uint8_t* kernel_pattern,
                     int64_t in_channels) {
  if (num_patterns < 1 || num_patterns > 256) throw_invalid("patterns must have 1..256 rows, got " + std::to_string(num_patterns));
  if (entries < 1 || entries > 9) throw_invalid("patterns must have 1..9 entries per row, got " + std::to_string(entries));
  if (out_channels < 0 || nnz < 0 || in_channels < 0)
    throw_invalid("negative sizes (out_channels " + std::to_string(out_channels) + ", kernels " + std::to_string(nnz) +
                  ", in_channels " + std::to_string(in_channels) + ")");
  for (int64_t p = 0; p < num_patterns; ++p) {
    uint16_t seen = 0;
    for (int64_t e = 0; e < entries; ++e) {
      const int pos = patterns[p * entries + e];
      if (pos > 8) throw_invalid("pattern " + std::to_string(p) + " has position " + std::to_string(pos) + " outside 0..8");
      if (seen & (1u << pos)) throw_invalid("pattern " + std::to_string(p) + " repeats position " + std::to_string(pos));
      seen |= static_cast<uint16_t>(1u << pos);
    }
  }
  if (filter_ptr[0] != 0) throw_invalid("filter_ptr[0] must be 0, got " + std::to_string(filter_ptr[0]));
  for (int64_t o = 0; o < out_channels; ++o)
    if (filter_ptr[o + 1] < filter_ptr[o])
      throw_invalid("filter_ptr must be non-decreasing (filter " + std::to_string(o) + ")");
  if (filter_ptr[out_channels] != nnz)
    throw_invalid("filter_ptr[-1] = " + std::to_string(filter_ptr[out_channels]) + " but there are " + std::to_string(nnz) + " kernels");
  for (int64_t k = 0; k < nnz; ++k) {
    if (kernel_channel[k] < 0 || kernel_channel[k] >= in_channels)
      throw_invalid("kernel_channel[" + std::to_string(k) + "] = " + std::to_string(kernel_channel[k]) +
                    " is outside 0.." + std::to_string(in_channels - 1));
    if (kernel_pattern[k] >= num_patterns)
      throw_invalid("kernel_pattern[" + std::to_string(k) + "] = " + std::to_string(kernel_pattern[k]) +
                    " but there are only " + std::to_string(num_patterns) + " patterns");
  }
  // A (filter, channel) pair listed twice would be summed by the kernels but kept once by
  // decompress: reject it. last_filter[c] = last filter that used channel c, O(nnz + Cin);
  // when Cin is much larger than nnz, sort each filter's channels instead (no Cin-sized buffer).
  auto duplicate = [&](int64_t o, int32_t c) {
    return "filter " + std::to_string(o) + " lists input channel " + std::to_string(c) +
           " twice (each (filter, channel) kernel may appear once)";
  };
  if (in_channels <= 4 * nnz + 4096) {
    std::vector<int64_t> last_filter(static_cast<size_t>(std::max<int64_t>(in_channels, 0)), -1);
    for (int64_t o = 0; o < out_channels; ++o)
      for (int64_t k = filter_ptr[o]; k < filter_ptr[o + 1]; ++k) {
        if (last_filter[kernel_channel[k]] == o) throw_invalid(duplicate(o, kernel_channel[k]));
        last_filter[kernel_channel[k]] = o;
      }
  } else {
    std::vector<int32_t> chans;
    for (int64_t o = 0; o < out_channels; ++o) {
      chans.assign(kernel_channel + filter_ptr[o], kernel_channel + filter_ptr[o + 1]);
      std::sort(chans.begin(), chans.end());
      const auto it = std::adjacent_find(chans.begin(), chans.end());
      if (it != chans.end()) throw_invalid(duplicate(o, *it));
    }
  }
}

namespace {
// Calls f(oh, ow, ih, iw) for every output pixel whose tap (kh, kw) lands inside the input.
template <typename F>
inline void for_each_tap_pixel(const ConvShape& s, int kh, int kw, F&& f) {
  for (int64_t oh = 0; oh < s.out_h; ++oh) {
    const int64_t ih = oh * s.stride_h - s.pad_h + kh * s.dil_h;
    if (ih < 0 || ih >= s.in_h) continue;
    for (int64_t ow = 0; ow < s.out_w; ++ow) {
      const int64_t iw = ow * s.stride_w - s.pad_w + kw * s.dil_w;
      if (iw < 0 || iw >= s.in_w) continue;
      f(oh, ow, ih, iw);
    }
  }
}
}  // namespace

namespace {
// The forward loops; post(out_plane_ptr, image n, channel o) finishes each output plane.
template <typename T, typename Post>
void forward_planes(const ConvShape& s, const PatternWeights<T>& w, const T* input, const T* bias, T* output,
                    const ParallelFor& pfor, Post&& post) {
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  // One task per (image, output channel): tasks write disjoint output planes.
  pfor(s.batch * s.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t n = t / s.out_channels, o = t % s.out_channels;
      T* out = output + t * out_plane;
      std::fill(out, out + out_plane, bias ? bias[o] : T(0));
      for (int64_t k = w.filter_ptr[o]; k < w.filter_ptr[o + 1]; ++k) {
        const T* in = input + (n * s.in_channels + w.kernel_channel[k]) * in_plane;
        const uint8_t* pat = w.patterns + w.kernel_pattern[k] * w.entries;
        for (int64_t e = 0; e < w.entries; ++e) {
          const T v = w.values[k * w.entries + e];
          for_each_tap_pixel(s, pat[e] / 3, pat[e] % 3, [&](int64_t oh, int64_t ow, int64_t ih, int64_t iw) {
            out[oh * s.out_w + ow] += v * in[ih * s.in_w + iw];
          });
        }
      }
      post(out, n, o);
    }
  });
}
}  // namespace

template <typename T>
void reference_forward(const ConvShape& s, const PatternWeights<T>& w, const T* input, const T* bias,
                       T* output, const ParallelFor& pfor) {
  forward_planes(s, w, input, bias, output, pfor, [](T*, int64_t, int64_t) {});
}

void reference_forward(const ConvShape& s, const PatternWeights<float>& w, const float* input, const Epilogue& ep,
                       float* output, const ParallelFor& pfor) {
  if (ep.only_shift()) {  // a plain bias: the accumulation starts from it, as in the bias form
    reference_forward<float>(s, w, input, ep.shift, output, pfor);
    return;
  }
  const int64_t out_plane = s.out_h * s.out_w;
  forward_planes(s, w, input, static_cast<const float*>(nullptr), output, pfor, [&](float* out, int64_t n, int64_t o) {
    const float* r = ep.residual ? ep.residual + (n * s.out_channels + o) * out_plane : nullptr;
    for (int64_t p = 0; p < out_plane; ++p) out[p] = ep.apply(out[p], o, r ? r[p] : 0.f);
  });
}

template <typename T>
void reference_grad_input(const ConvShape& s, const PatternWeights<T>& w, const T* grad_output,
                          T* grad_input, const ParallelFor& pfor) {
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  // One task per image: every filter may write every input channel of that image.
  pfor(s.batch, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      T* gin = grad_input + n * s.in_channels * in_plane;
      std::fill(gin, gin + s.in_channels * in_plane, T(0));
      for (int64_t o = 0; o < s.out_channels; ++o) {
        const T* gout = grad_output + (n * s.out_channels + o) * out_plane;
        for (int64_t k = w.filter_ptr[o]; k < w.filter_ptr[o + 1]; ++k) {
          T* g = gin + w.kernel_channel[k] * in_plane;
          const uint8_t* pat = w.patterns + w.kernel_pattern[k] * w.entries;
          for (int64_t e = 0; e < w.entries; ++e) {
            const T v = w.values[k * w.entries + e];
            for_each_tap_pixel(s, pat[e] / 3, pat[e] % 3, [&](int64_t oh, int64_t ow, int64_t ih, int64_t iw) {
              g[ih * s.in_w + iw] += v * gout[oh * s.out_w + ow];
            });
          }
        }
      }
    }
  });
}

template <typename T>
void reference_grad_values(const ConvShape& s, const PatternWeights<T>& w, const T* input,
                           const T* grad_output, T* grad_values, const ParallelFor& pfor) {
  const int64_t in_plane = s.in_h * s.in_w, out_plane = s.out_h * s.out_w;
  // One task per output channel: its kernels' gradients are disjoint from other filters'.
  pfor(s.out_channels, 1, [&](int64_t begin, int64_t end) {
    for (int64_t o = begin; o < end; ++o) {
      for (int64_t k = w.filter_ptr[o]; k < w.filter_ptr[o + 1]; ++k) {
        const uint8_t* pat = w.patterns + w.kernel_pattern[k] * w.entries;
        for (int64_t e = 0; e < w.entries; ++e) {
          T acc = 0;
          for (int64_t n = 0; n < s.batch; ++n) {
            const T* in = input + (n * s.in_channels + w.kernel_channel[k]) * in_plane;
            const T* gout = grad_output + (n * s.out_channels + o) * out_plane;
            for_each_tap_pixel(s, pat[e] / 3, pat[e] % 3, [&](int64_t oh, int64_t ow, int64_t ih, int64_t iw) {
              acc += in[ih * s.in_w + iw] * gout[oh * s.out_w + ow];
            });
          }
          grad_values[k * w.entries + e] = acc;
        }
      }
    }
  });
}

#define PATSPARSE_INSTANTIATE(T)                                                                     \
  template void reference_forward<T>(const ConvShape&, const PatternWeights<T>&, const T*, const T*, \
                                     T*, const ParallelFor&);                                       \
  template void reference_grad_input<T>(const ConvShape&, const PatternWeights<T>&, const T*, T*,    \
                                        const ParallelFor&);                                        \
  template void reference_grad_values<T>(const ConvShape&, const PatternWeights<T>&, const T*,       \
                                         const T*, T*, const ParallelFor&);
PATSPARSE_INSTANTIATE(float)
PATSPARSE_INSTANTIATE(double)
#undef PATSPARSE_INSTANTIATE

}  // namespace patsparse
