// Thin torch binding of the sparse 1x1 conv / Linear kernels (kernels/spmm.h): op schemas, argument
// checks, layouts. The ops take the module's stored arrays (sparse.py's format) as they are; the
// runtime CSR index is found by their content in a process-wide cache (never stale, holds no fp32
// copy of stored values), and the epilogue (kernels/epilogue.h's scale, shift, residual, clamp) is
// applied in the kernels' output stage.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cstring>
#include <stdexcept>

#include "kernels/checked.h"
#include "kernels/dispatch.h"
#include "kernels/spmm.h"
#include "ops_common.h"

namespace patsparse {
namespace {

SparseIndexCache& sparse_index_cache() {
  static SparseIndexCache cache;
  return cache;
}

// Keeps the contiguous tensors alive while the view points into them.
struct StoredArrays {
  at::Tensor header, index, codes, values, code_scale;
  StoredSparse view;
};

void check_array(const at::Tensor& t, const char* name, at::ScalarType dtype) {
  TORCH_CHECK(t.dim() == 1 && t.scalar_type() == dtype, "patsparse: '", name, "' must be a 1-D ", dtype,
              " tensor, got ", t.scalar_type(), " ", t.sizes());
  TORCH_CHECK(t.device().is_cpu(), "patsparse: '", name, "' must be on the CPU, got ", t.device());
  check_has_data(t, name);
}

StoredArrays stored_arrays(const at::Tensor& header, const at::Tensor& index, const at::Tensor& codes,
                           const at::Tensor& values, const at::Tensor& code_scale, int64_t rows, int64_t cols) {
  check_array(header, "header", at::kByte);
  check_array(index, "index", at::kByte);
  check_array(codes, "codes", at::kByte);
  check_array(values, "values", at::kFloat);
  check_array(code_scale, "scale", at::kFloat);
  TORCH_CHECK(rows >= 0 && cols >= 0, "patsparse: negative weight size [", rows, ", ", cols, "]");
  StoredArrays a{header.contiguous(), index.contiguous(), codes.contiguous(), values.contiguous(),
                 code_scale.contiguous(), {}};
  StoredSparse& s = a.view;
  s.rows = rows;
  s.cols = cols;
  s.header = a.header.data_ptr<uint8_t>();
  s.header_bytes = a.header.numel();
  s.index = a.index.data_ptr<uint8_t>();
  s.index_bytes = a.index.numel();
  s.codes = a.codes.data_ptr<uint8_t>();
  s.codes_bytes = a.codes.numel();
  s.num_values = a.values.numel();
  s.code_scale = a.code_scale.data_ptr<float>();
  s.num_code_scale = a.code_scale.numel();
  return a;
}

std::shared_ptr<const SparseIndex> runtime_index(const StoredArrays& a) {
  return core_call("invalid compressed weight: ", [&] { return sparse_index_cache().get(a.view); });
}

// Optional per-channel scale / shift and output-shaped residual, in the input's dtype (contiguous).
struct EpilogueArgs {
  std::optional<at::Tensor> scale, shift, residual;
};

EpilogueArgs epilogue_args(const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                           const std::optional<at::Tensor>& residual, const at::Tensor& input, int64_t channels,
                           at::IntArrayRef out_sizes) {
  EpilogueArgs e;
  for (auto [t, name, dst] : {std::tuple{&scale, "scale", &e.scale}, std::tuple{&shift, "shift", &e.shift}}) {
    if (!*t) continue;
    const at::Tensor& v = **t;
    TORCH_CHECK(v.scalar_type() == input.scalar_type(), "patsparse: ", name, " dtype ", v.scalar_type(),
                " does not match input dtype ", input.scalar_type());
    TORCH_CHECK(v.dim() == 1 && v.size(0) == channels, "patsparse: ", name, " must be [", channels, "], got ",
                v.sizes());
    TORCH_CHECK(v.device().is_cpu(), "patsparse: ", name, " must be on the CPU");
    *dst = v.contiguous();
  }
  if (residual) {
    TORCH_CHECK(residual->scalar_type() == input.scalar_type(), "patsparse: residual dtype ",
                residual->scalar_type(), " does not match input dtype ", input.scalar_type());
    TORCH_CHECK(residual->sizes() == out_sizes, "patsparse: residual must have the output's shape ", out_sizes,
                ", got ", residual->sizes());
    TORCH_CHECK(residual->device().is_cpu(), "patsparse: residual must be on the CPU");
  }
  return e;
}

void check_input(const at::Tensor& input) {
  TORCH_CHECK(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble,
              "patsparse: input must be float32 or float64, got ", input.scalar_type());
  TORCH_CHECK(input.device().is_cpu(), "patsparse: input must be on the CPU, got ", input.device());
}

// Runs the product on laid-out operands: fp32 through the active ISA, fp64 through the reference.
template <typename T>
void run(const SparseIndex& idx, const StoredArrays& a, SpmmIo<T> io, const EpilogueArgs& e,
         const at::Tensor& residual) {
  if (e.scale) io.scale = e.scale->data_ptr<T>();
  if (e.shift) io.shift = e.shift->data_ptr<T>();
  if (residual.defined()) io.residual = residual.data_ptr<T>();
  const CsrView w = csr_view(idx, a.values.data_ptr<float>());
  if constexpr (std::is_same_v<T, float>) {
    core_call("", [&] { spmm_f32(active_isa(), w, io, aten_parallel_for(), at::get_num_threads()); });
  } else {
    reference_spmm<T>(w, io, aten_parallel_for());
  }
}

at::Tensor sparse_conv1x1_cpu(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                              const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                              int64_t out_channels, const std::optional<at::Tensor>& scale,
                              const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                              at::IntArrayRef stride, double lo, double hi) {
  check_clamp_bounds("sparse_conv1x1", lo, hi);
  lo = clamp_bound(lo);
  hi = clamp_bound(hi);
  check_input(input);
  TORCH_CHECK(input.dim() == 4, "patsparse: input must be 4-D [N, C, H, W], got ", input.dim(), "-D");
  TORCH_CHECK(stride.size() == 2 && stride[0] >= 1 && stride[1] >= 1, "patsparse: stride must be 2 ints >= 1, got ",
              stride);
  const int64_t batch = input.size(0), in_channels = input.size(1), h = input.size(2), w = input.size(3);
  TORCH_CHECK(h > 0 && w > 0, "patsparse: input ", input.sizes(), " has an empty spatial size");
  const StoredArrays a = stored_arrays(header, index, codes, values, code_scale, out_channels, in_channels);
  const auto idx = runtime_index(a);  // validated even for an empty batch
  const int64_t oh = (h - 1) / stride[0] + 1, ow = (w - 1) / stride[1] + 1;
  const std::vector<int64_t> out_sizes{batch, out_channels, oh, ow};
  const EpilogueArgs e = epilogue_args(scale, shift, residual, input, out_channels, out_sizes);
  const auto memory_format = input.suggest_memory_format();
  at::Tensor x = input;
  if (stride[0] > 1 || stride[1] > 1) x = x.slice(2, 0, h, stride[0]).slice(3, 0, w, stride[1]);
  x = x.contiguous();  // NCHW: pixels are the contiguous columns of X[C, H*W]
  at::Tensor res = residual ? residual->contiguous() : at::Tensor();
  auto out = at::empty(out_sizes, input.options());
  if (out.numel() > 0) {
    const int64_t n = oh * ow;
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_conv1x1", [&] {
      SpmmIo<scalar_t> io;
      io.batch = batch;
      io.n = n;
      io.x = x.data_ptr<scalar_t>();
      io.x_image = in_channels * n;
      io.x_chan = n;
      io.x_col = 1;
      io.y = out.data_ptr<scalar_t>();
      io.y_image = out_channels * n;
      io.y_chan = n;
      io.y_col = 1;
      io.lo = static_cast<scalar_t>(lo);
      io.hi = static_cast<scalar_t>(hi);
      run<scalar_t>(*idx, a, io, e, res);
    });
  }
  return memory_format == at::MemoryFormat::Contiguous ? out : out.contiguous(memory_format);
}

// Batches of at least this many samples run the column kernel on the transposed input (contiguous
// vector loads); smaller ones the gather kernel on the input as it is.
constexpr int64_t kLinearTransposeBatch = 8;

at::Tensor sparse_linear_cpu(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                             const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                             int64_t out_features, const std::optional<at::Tensor>& scale,
                             const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                             double lo, double hi) {
  check_clamp_bounds("sparse_linear", lo, hi);
  lo = clamp_bound(lo);
  hi = clamp_bound(hi);
  check_input(input);
  TORCH_CHECK(input.dim() >= 1, "patsparse: input must have at least 1 dimension");
  const int64_t in_features = input.size(-1);
  const StoredArrays a = stored_arrays(header, index, codes, values, code_scale, out_features, in_features);
  const auto idx = runtime_index(a);
  std::vector<int64_t> out_sizes(input.sizes().begin(), input.sizes().end());
  out_sizes.back() = out_features;
  int64_t batch = 1;
  for (size_t d = 0; d + 1 < out_sizes.size(); ++d) batch *= out_sizes[d];
  const EpilogueArgs e = epilogue_args(scale, shift, residual, input, out_features, out_sizes);
  auto out = at::empty(out_sizes, input.options());
  if (out.numel() == 0) return out;
  const bool transpose = batch >= kLinearTransposeBatch && active_isa() != Isa::Scalar;
  at::Tensor x = input.reshape({batch, in_features});
  at::Tensor res;
  if (residual) res = residual->reshape({batch, out_features});
  at::Tensor y = transpose ? at::empty({out_features, batch}, input.options()) : out.view({batch, out_features});
  if (transpose) {
    x = x.t().contiguous();  // X[k, b]: samples are the contiguous columns
    if (res.defined()) res = res.t().contiguous();
  } else {
    x = x.contiguous();
    if (res.defined()) res = res.contiguous();
  }
  AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), "sparse_linear", [&] {
    SpmmIo<scalar_t> io;
    io.batch = 1;
    io.n = batch;
    io.x = x.data_ptr<scalar_t>();
    io.y = y.data_ptr<scalar_t>();
    if (transpose) {
      io.x_chan = batch, io.x_col = 1, io.y_chan = batch, io.y_col = 1;
    } else {
      io.x_chan = 1, io.x_col = in_features, io.y_chan = 1, io.y_col = out_features;
    }
    io.lo = static_cast<scalar_t>(lo);
    io.hi = static_cast<scalar_t>(hi);
    run<scalar_t>(*idx, a, io, e, res);
  });
  if (transpose) out.view({batch, out_features}).copy_(y.t());
  return out;
}

// The dense fp32 weight [rows, cols] of the stored arrays (validated like the products' index), a new
// tensor per call. The ops' input gradient multiplies by it; a native op (with a fake kernel) keeps that
// backward traceable by torch.compile, which a data-dependent Python decode is not.
at::Tensor sparse_dense_weight_cpu(const at::Tensor& header, const at::Tensor& index, const at::Tensor& codes,
                                   const at::Tensor& values, const at::Tensor& code_scale, int64_t rows,
                                   int64_t cols) {
  const StoredArrays a = stored_arrays(header, index, codes, values, code_scale, rows, cols);
  const auto idx = runtime_index(a);
  auto out = at::empty({rows, cols}, at::kFloat);
  csr_to_dense(csr_view(*idx, a.values.data_ptr<float>()), out.data_ptr<float>());
  return out;
}

// The dense fp32 weight of `shape` for the layers without a native kernel (SparseConv2d other than
// 1x1, any layer on a device), from the decode cache: decoded once per content, never stale, not
// held by the module (so not in its TorchScript file either). Device arrays are read through a host
// copy (the key is content). Returns a copy of the cached weight (see pattern_decode).
at::Tensor sparse_decode(const at::Tensor& header, const at::Tensor& index, const at::Tensor& codes,
                         const at::Tensor& values, const at::Tensor& code_scale, at::IntArrayRef shape) {
  TORCH_CHECK(!shape.empty(), "patsparse::sparse_decode: shape must have at least one dimension");
  int64_t cols = 1;
  for (size_t d = 0; d < shape.size(); ++d) {
    TORCH_CHECK(shape[d] >= 0, "patsparse::sparse_decode: negative size in shape ", shape);
    TORCH_CHECK(d == 0 || mul_ok(cols, shape[d], &cols), "patsparse::sparse_decode: shape ", shape,
                " overflows int64");
  }
  const c10::Device device = header.device();
  for (const at::Tensor* t : {&index, &codes, &values, &code_scale})
    TORCH_CHECK(t->device() == device, "patsparse::sparse_decode: the stored arrays must be on one device, got ",
                device, " and ", t->device());
  const StoredArrays a = stored_arrays(header.cpu(), index.cpu(), codes.cpu(), values.cpu(), code_scale.cpu(),
                                       shape[0], cols);
  // op id 2 (decode_ops.cpp has 0 and 1), the shape, then each array's size and bytes
  std::vector<int64_t> params{2, static_cast<int64_t>(shape.size())};
  params.insert(params.end(), shape.begin(), shape.end());
  const at::Tensor* arrays[5] = {&a.header, &a.index, &a.codes, &a.values, &a.code_scale};
  for (const at::Tensor* t : arrays) params.push_back(static_cast<int64_t>(t->nbytes()));
  std::vector<KeyPart> key{{params.data(), params.size() * sizeof(int64_t)}};
  for (const at::Tensor* t : arrays) key.push_back({t->data_ptr(), t->nbytes()});
  return decode_cached(key, device, [&](const std::vector<KeyPart>& snap) {
    // Built directly, not through the index cache: only the dense weight is kept. From the key's copy
    // of the arrays (parts 1..5, in `arrays` order), as decode_cached asks.
    std::vector<float> values(snap[4].bytes / sizeof(float)), code_scale(snap[5].bytes / sizeof(float));
    std::memcpy(values.data(), snap[4].data, snap[4].bytes);  // (floats: aligned copies of the bytes)
    std::memcpy(code_scale.data(), snap[5].data, snap[5].bytes);
    StoredSparse view = a.view;
    view.header = static_cast<const uint8_t*>(snap[1].data);
    view.index = static_cast<const uint8_t*>(snap[2].data);
    view.codes = static_cast<const uint8_t*>(snap[3].data);
    view.code_scale = code_scale.data();
    const auto idx = core_call("invalid compressed weight: ", [&] { return build_sparse_index(view); });
    auto out = at::empty(shape, at::kFloat);
    csr_to_dense(csr_view(*idx, values.data()), out.data_ptr<float>());
    return std::vector<at::Tensor>{out};
  })[0].clone();  // a new tensor per call: see pattern_decode (decode_ops.cpp)
}

// [hits, builds, size, bytes] of the runtime index cache (tests see index builds with it).
std::vector<int64_t> sparse_index_cache_stats() {
  const SparseIndexCacheStats st = sparse_index_cache().stats();
  return {st.hits, st.builds, st.size, st.bytes};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(patsparse, m) {
  m.def("sparse_conv1x1(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, int out_channels, Tensor? scale, Tensor? shift, Tensor? residual, int[2] stride, "
        "float lo, float hi) -> Tensor");
  m.def("sparse_linear(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, int out_features, Tensor? scale, Tensor? shift, Tensor? residual, float lo, "
        "float hi) -> Tensor");
  m.def("sparse_dense_weight(Tensor header, Tensor index, Tensor codes, Tensor values, Tensor code_scale, "
        "int rows, int cols) -> Tensor");
  m.def("sparse_decode(Tensor header, Tensor index, Tensor codes, Tensor values, Tensor code_scale, int[] shape) "
        "-> Tensor");
  m.def("sparse_index_cache_stats() -> int[]", &sparse_index_cache_stats);
  m.def("clear_sparse_index_cache() -> ()", [] { sparse_index_cache().clear(); });
}

TORCH_LIBRARY_IMPL(patsparse, CPU, m) {
  m.impl("sparse_conv1x1", &sparse_conv1x1_cpu);
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_dense_weight", &sparse_dense_weight_cpu);
  m.impl("sparse_decode", &sparse_decode);
}
TORCH_LIBRARY_IMPL(patsparse, CUDA, m) { m.impl("sparse_decode", &sparse_decode); }

}  // namespace patsparse
