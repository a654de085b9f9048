#include "plan.h"

#include <algorithm>
#include <numeric>

#include "kernels/pattern_conv.h"

namespace patsparse {
namespace cuda {

HostPlan build_plan(int64_t num_patterns, int64_t entries, int64_t out_channels, int64_t nnz,
                    const uint8_t* patterns, const int32_t* filter_ptr, const int32_t* kernel_channel,
                    const uint8_t* kernel_pattern, int64_t in_channels) {
  validate_format(num_patterns, entries, out_channels, nnz, patterns, filter_ptr, kernel_channel, kernel_pattern,
                  in_channels);  // also rejects in_channels < 0
  HostPlan p;
  p.out_channels = out_channels;
  p.in_channels = in_channels;
  p.nnz = nnz;

  // Kernels of each filter in (channel, pattern, index) order: the canonical order that the
  // group test compares and the forward walks (channel order = shared-memory slot order).
  std::vector<int32_t> order(static_cast<size_t>(nnz));
  std::iota(order.begin(), order.end(), 0);
  for (int64_t o = 0; o < out_channels; ++o) {
    std::sort(order.begin() + filter_ptr[o], order.begin() + filter_ptr[o + 1], [&](int32_t a, int32_t b) {
      if (kernel_channel[a] != kernel_channel[b]) return kernel_channel[a] < kernel_channel[b];
      if (kernel_pattern[a] != kernel_pattern[b]) return kernel_pattern[a] < kernel_pattern[b];
      return a < b;
    });
  }
  auto same_structure = [&](int64_t o1, int64_t o2) {
    const int64_t n1 = filter_ptr[o1 + 1] - filter_ptr[o1];
    if (n1 != filter_ptr[o2 + 1] - filter_ptr[o2]) return false;
    for (int64_t i = 0; i < n1; ++i) {
      const int32_t a = order[filter_ptr[o1] + i], b = order[filter_ptr[o2] + i];
      if (kernel_channel[a] != kernel_channel[b] || kernel_pattern[a] != kernel_pattern[b]) return false;
    }
    return true;
  };
  p.group = 1;
  for (int g : {8, 4, 2}) {
    bool ok = out_channels > 0;
    for (int64_t base = 0; ok && base < out_channels; base += g)
      for (int64_t j = 1; ok && j < g && base + j < out_channels; ++j) ok = same_structure(base, base + j);
    if (ok) { p.group = g; break; }
  }
  const int G = p.group, FB = kOutBlock / G;
  p.num_groups = static_cast<int>((out_channels + G - 1) / G);
  p.num_blocks = static_cast<int>((out_channels + kOutBlock - 1) / kOutBlock);

  // Forward: per block the union of channels, per group its entries.
  p.blk_chan_ptr.assign(1, 0);
  p.grp_ptr.assign(1, 0);
  std::vector<int32_t> chans;
  for (int b = 0; b < p.num_blocks; ++b) {
    const int64_t o_begin = static_cast<int64_t>(b) * kOutBlock;
    const int64_t o_end = std::min<int64_t>(out_channels, o_begin + kOutBlock);
    chans.clear();
    for (int64_t k = filter_ptr[o_begin]; k < filter_ptr[o_end]; ++k) chans.push_back(kernel_channel[k]);
    std::sort(chans.begin(), chans.end());
    chans.erase(std::unique(chans.begin(), chans.end()), chans.end());
    for (int fb = 0; fb < FB; ++fb) {
      const int64_t g = static_cast<int64_t>(b) * FB + fb;
      if (g >= p.num_groups) break;
      const int64_t lead = g * G;
      for (int64_t i = 0; i < filter_ptr[lead + 1] - filter_ptr[lead]; ++i) {
        const int32_t k = order[filter_ptr[lead] + i];
        const auto slot = std::lower_bound(chans.begin(), chans.end(), kernel_channel[k]) - chans.begin();
        p.ent_slot.push_back(static_cast<int32_t>(slot));
        p.ent_pattern.push_back(kernel_pattern[k]);
        for (int j = 0; j < G; ++j) {
          const int64_t o = lead + j;
          p.ent_kernel.push_back(o < out_channels ? order[filter_ptr[o] + i] : -1);
        }
      }
      p.grp_ptr.push_back(static_cast<int32_t>(p.ent_slot.size()));
    }
    p.blk_chan.insert(p.blk_chan.end(), chans.begin(), chans.end());
    p.blk_chan_ptr.push_back(static_cast<int32_t>(p.blk_chan.size()));
  }

  // grad_input: kernels grouped by input channel (counting sort, stable in kernel order).
  p.chan_ptr.assign(static_cast<size_t>(in_channels + 1), 0);
  for (int64_t k = 0; k < nnz; ++k) ++p.chan_ptr[kernel_channel[k] + 1];
  for (int64_t c = 0; c < in_channels; ++c) p.chan_ptr[c + 1] += p.chan_ptr[c];
  p.t_out.resize(static_cast<size_t>(nnz));
  p.t_kernel.resize(static_cast<size_t>(nnz));
  p.t_pattern.resize(static_cast<size_t>(nnz));
  p.kernel_out.resize(static_cast<size_t>(nnz));
  std::vector<int32_t> fill(p.chan_ptr.begin(), p.chan_ptr.end() - 1);  // next free position per channel
  for (int64_t o = 0; o < out_channels; ++o) {
    for (int64_t k = filter_ptr[o]; k < filter_ptr[o + 1]; ++k) {
      const int32_t at = fill[kernel_channel[k]]++;
      p.t_out[at] = static_cast<int32_t>(o);
      p.t_kernel[at] = static_cast<int32_t>(k);
      p.t_pattern[at] = kernel_pattern[k];
      p.kernel_out[k] = static_cast<int32_t>(o);
    }
  }
  return p;
}

namespace {
template <typename F>
void for_each_array(const HostPlan& p, F&& f) {
  f(p.blk_chan_ptr); f(p.blk_chan); f(p.grp_ptr); f(p.ent_slot); f(p.ent_pattern); f(p.ent_kernel);
  f(p.chan_ptr); f(p.t_out); f(p.t_kernel); f(p.t_pattern); f(p.kernel_out);
}
}  // namespace

std::vector<int32_t> pack_plan(const HostPlan& plan) {
  std::vector<int32_t> all;
  for_each_array(plan, [&](const std::vector<int32_t>& v) { all.insert(all.end(), v.begin(), v.end()); });
  return all;
}

DevicePlan plan_view(const HostPlan& plan, const int32_t* base) {
  DevicePlan d;
  d.group = plan.group;
  d.num_groups = plan.num_groups;
  d.num_blocks = plan.num_blocks;
  const int32_t** slots[] = {&d.blk_chan_ptr, &d.blk_chan, &d.grp_ptr, &d.ent_slot, &d.ent_pattern, &d.ent_kernel,
                             &d.chan_ptr, &d.t_out, &d.t_kernel, &d.t_pattern, &d.kernel_out};
  size_t i = 0, offset = 0;
  for_each_array(plan, [&](const std::vector<int32_t>& v) {
    *slots[i++] = base + offset;
    offset += v.size();
  });
  return d;
}

}  // namespace cuda
}  // namespace patsparse
