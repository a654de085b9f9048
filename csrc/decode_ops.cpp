// Tensors derived from stored arrays, found by the arrays' content in one process-wide cache
// (lru_cache.h: never stale), so a layer decodes once, not per call, and the module, its TorchScript
// file and its .ptl hold only the stored form: PatternConv2d's decoded values
// (patsparse::pattern_decode) and, for device layers, int32 channel indices (pattern_channels);
// SparseConv2d / SparseLinear's dense weight for the layers without a native kernel (sparse_decode,
// sparse_ops.cpp).
#include <ATen/ATen.h>
#include <c10/core/InferenceMode.h>
#include <torch/library.h>

#include <cstring>
#include <functional>

#include "kernels/codes.h"
#include "kernels/lru_cache.h"
#include "ops_common.h"

namespace patsparse {
namespace {

// One decoded layer: the bytes it was decoded from (op, parameters, stored arrays), the device its
// outputs live on, and the outputs. `versions` catch a caller writing into an output in place (the
// outputs are the cache's own tensors, read-only by contract): such an entry is rebuilt.
struct Decoded {
  std::vector<uint8_t> stored;
  c10::Device device = c10::Device(c10::kCPU);
  std::vector<at::Tensor> outputs;
  std::vector<int64_t> versions;
};

LruCache<const Decoded>& decode_cache() {
  static LruCache<const Decoded> cache(512, int64_t(1) << 30);
  return cache;
}

// `key`'s parts against an entry's concatenated bytes (same total size), compared in place.
bool same_key(const std::vector<uint8_t>& stored, const std::vector<KeyPart>& key) {
  size_t at = 0;
  for (const KeyPart& part : key) {
    if (part.bytes && std::memcmp(stored.data() + at, part.data, part.bytes) != 0) return false;
    at += part.bytes;
  }
  return true;
}

}  // namespace

std::vector<at::Tensor> decode_cached(
    const std::vector<KeyPart>& key, c10::Device device,
    const std::function<std::vector<at::Tensor>(const std::vector<KeyPart>& snapshot)>& build) {
  size_t key_bytes = 0;
  for (const KeyPart& part : key) key_bytes += part.bytes;
  auto& cache = decode_cache();
  for (const auto& e : cache.candidates([&](const Decoded& d) {
         return d.device == device && d.stored.size() == key_bytes;
       })) {
    if (!same_key(e->stored, key)) continue;
    bool intact = true;
    for (size_t i = 0; i < e->outputs.size(); ++i) intact = intact && e->outputs[i]._version() == e->versions[i];
    if (!intact) {
      cache.remove(e);  // written into in place: rebuild
      break;
    }
    cache.hit(e);
    return e->outputs;
  }
  // Cached tensors outlive this call: never inference tensors, so autograd may save them later.
  c10::InferenceMode normal_mode(false);
  auto entry = std::make_shared<Decoded>();
  entry->stored.reserve(key_bytes);  // (never reallocated below: the snapshot points into it)
  std::vector<KeyPart> snapshot;      // the same parts in the entry's own copy: what the outputs are decoded from
  for (const KeyPart& part : key) {
    const auto* p = static_cast<const uint8_t*>(part.data);
    snapshot.push_back({entry->stored.data() + entry->stored.size(), part.bytes});
    entry->stored.insert(entry->stored.end(), p, p + part.bytes);
  }
  int64_t bytes = static_cast<int64_t>(key_bytes);
  for (at::Tensor t : build(snapshot)) {
    if (!device.is_cpu()) t = t.to(device);
    bytes += static_cast<int64_t>(t.nbytes());
    entry->versions.push_back(t._version());
    entry->outputs.push_back(std::move(t));
  }
  entry->device = device;
  cache.add(entry, bytes);
  return entry->outputs;
}

namespace {

// int32 channel indices of a PatternConv2d's stored (int16) ones. On a device, the cache's own tensor
// (the CUDA plan cache keys on tensor identity: the same tensor keeps it hitting; read it only). On the
// CPU a copy, as pattern_decode's: an exported / compiled CPU graph may reuse a functional op's output
// as scratch memory without a version bump, which corrupted the cached entry for every later call.
at::Tensor pattern_channels(const at::Tensor& kernel_channel) {
  TORCH_CHECK(kernel_channel.dim() == 1 &&
                  (kernel_channel.scalar_type() == at::kShort || kernel_channel.scalar_type() == at::kInt),
              "patsparse::pattern_channels: kernel_channel must be a 1-D int16 or int32 tensor, got ",
              kernel_channel.scalar_type(), " ", kernel_channel.sizes());
  check_has_data(kernel_channel, "kernel_channel");
  // Host copy (a no-op on the CPU): the key is content, so a device layer pays one small copy per call.
  const at::Tensor kc = kernel_channel.cpu().contiguous();
  const int64_t params[2] = {0, static_cast<int64_t>(kc.element_size())};  // 0: this op
  const at::Tensor out = decode_cached(
      {{params, sizeof(params)}, {kc.data_ptr(), kc.nbytes()}}, kernel_channel.device(),
      [&](const std::vector<KeyPart>& snap) {
        const at::Tensor copy = at::from_blob(const_cast<void*>(snap[1].data), {kc.numel()}, kc.options());
        return std::vector<at::Tensor>{copy.to(at::kInt, /*non_blocking=*/false, /*copy=*/true)};
      })[0];
  return out.device().is_cpu() ? out.clone() : out;
}

// Float values [kept_kernels, entries] of a quantized PatternConv2d's packed codes and scale: a new
// tensor per call (a copy of the cached decode). A functional op's output belongs to its caller:
// torch.compile's generated code may reuse it as scratch memory in place (without a version bump), so
// handing out the cache's own tensor let one compiled function corrupt every later decode.
at::Tensor pattern_decode(const at::Tensor& codes, const at::Tensor& scale, int64_t kept_kernels, int64_t entries,
                          int64_t bits, c10::string_view scheme) {
  TORCH_CHECK(codes.dim() == 1 && codes.scalar_type() == at::kByte,
              "patsparse::pattern_decode: codes must be a 1-D uint8 (bit-packed) tensor, got ", codes.scalar_type(),
              " ", codes.sizes());
  TORCH_CHECK(scale.numel() == 1 && at::isFloatingType(scale.scalar_type()),
              "patsparse::pattern_decode: scale must be one floating-point number, got ", scale.scalar_type(), " ",
              scale.sizes());
  check_has_data(codes, "codes");
  const int64_t count = core_call("pattern_decode: ", [&] {
    return pattern_code_count(kept_kernels, entries, bits, std::string_view(scheme.data(), scheme.size()));
  });
  const c10::Device device = codes.device();
  TORCH_CHECK(scale.device() == device, "patsparse::pattern_decode: codes and scale must be on one device, got ", device,
              ", ", scale.device());
  const bool f64 = scale.scalar_type() == at::kDouble, pow2 = scheme == "pow2";
  // Host copy (a no-op on the CPU): the key is content, so a device layer pays one small copy per call.
  const at::Tensor packed = codes.cpu().contiguous();
  const double s = scale.detach().cpu().to(at::kDouble).item<double>();

  const int64_t params[6] = {1, kept_kernels, entries, bits, pow2, f64};  // 1: this op
  const std::vector<KeyPart> key{{params, sizeof(params)}, {&s, sizeof(s)}, {packed.data_ptr(), packed.nbytes()}};
  return decode_cached(key, device, [&](const std::vector<KeyPart>& snap) {
    at::Tensor values = at::empty({kept_kernels, entries}, at::TensorOptions().dtype(f64 ? at::kDouble : at::kFloat));
    const auto* bytes = static_cast<const uint8_t*>(snap[2].data);
    const auto n = static_cast<int64_t>(snap[2].bytes);
    core_call("invalid quantized pattern weight: ", [&] {
      if (f64)
        decode_pattern_codes<double>(bytes, n, count, static_cast<int>(bits), pow2, s, values.data_ptr<double>());
      else
        decode_pattern_codes<float>(bytes, n, count, static_cast<int>(bits), pow2, static_cast<float>(s),
                                    values.data_ptr<float>());
    });
    return std::vector<at::Tensor>{values};
  })[0].clone();
}

// [hits, builds, size, bytes] of the decode cache (tests see decodes with it).
std::vector<int64_t> decode_cache_stats() {
  const PlanCacheStats st = decode_cache().stats();
  return {st.hits, st.builds, st.size, st.bytes};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patsparse, m) {
  // pattern_channels' output on a device is shared with the cache and with every later call on the same
  // array: read it only. On the CPU it, and pattern_decode's, is a new tensor.
  m.def("pattern_channels(Tensor kernel_channel) -> Tensor");
  m.def("pattern_decode(Tensor codes, Tensor scale, int kept_kernels, int entries, int bits, str scheme) -> Tensor");
  m.def("decode_cache_stats() -> int[]", &decode_cache_stats);
  m.def("clear_decode_cache() -> ()", [] { decode_cache().clear(); });
}

TORCH_LIBRARY_IMPL(patsparse, CPU, m) {
  m.impl("pattern_channels", &pattern_channels);
  m.impl("pattern_decode", &pattern_decode);
}
TORCH_LIBRARY_IMPL(patsparse, CUDA, m) {
  m.impl("pattern_channels", &pattern_channels);
  m.impl("pattern_decode", &pattern_decode);
}

}  // namespace patsparse
