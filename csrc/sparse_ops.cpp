// Thin torch binding of the sparse 1x1 conv / Linear kernels (kernels/spmm.h): op schemas, argument
// checks, layouts. The ops take the module's stored arrays (sparse.py's format) as they are; the
// runtime CSR index is found by their content in a process-wide cache (never stale, holds no fp32
// copy of stored values), and the epilogue (kernels/epilogue.h's scale, shift, residual, clamp) is
// applied in the kernels' output stage.
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include <limits>
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
  return decode_cached(key, device, [&] {
    // Built directly, not through the index cache: only the dense weight is kept.
    const auto idx = core_call("invalid compressed weight: ", [&] { return build_sparse_index(a.view); });
    auto out = at::empty(shape, at::kFloat);
    csr_to_dense(csr_view(*idx, a.values.data_ptr<float>()), out.data_ptr<float>());
    return std::vector<at::Tensor>{out};
  })[0].clone();  // a new tensor per call: see pattern_decode (decode_ops.cpp)
}

// ---- The layers' forward as one op each. sparse_conv1x1_layer / sparse_linear_layer: a native 1x1
// SparseConv2d / SparseLinear (the sparse product); sparse_conv2d_decoded / sparse_linear_decoded:
// the others (and any layer on another device): the dense op on the decoded weight. All are
// CompositeImplicitAutograd: they run, trace and export as the ops they call, so autograd,
// torch.export and ExecuTorch see sparse_conv1x1 / sparse_linear / sparse_decode and ATen ops. They
// do what the dense layer does with its input: its own error for an input it rejects, unbatched
// input, fp16 / bf16 (the native product computes them in fp32 and returns their dtype), autocast. A
// scripted or lite model thus holds one call per layer, not these steps in its bytecode.

// Whether the dense layer with parameters of dtype `own` rejects the floating input `x`: the dtypes
// differ after autocast's casts where autocast is on (its fp32 / fp16 / bf16 operands become the
// autocast dtype; fp64 ones stay).
bool dtypes_clash(const at::Tensor& x, at::ScalarType own) {
  at::ScalarType a = x.scalar_type(), b = own;
  if (a == b) return false;
  const c10::DeviceType device = x.device().type();
  if ((device == c10::DeviceType::CPU || device == c10::DeviceType::CUDA) && at::autocast::is_autocast_enabled(device)) {
    const at::ScalarType low = at::autocast::get_autocast_dtype(device);
    if (a != at::kDouble) a = low;
    if (b != at::kDouble) b = low;
  }
  return a != b;
}

// A conv layer's geometry (a Linear has none).
struct ConvGeometry {
  at::IntArrayRef stride, padding, dilation;
  int64_t groups = 1;
  std::optional<c10::string_view> padding_str;  // "same" / "valid" instead of `padding`
};

at::Tensor dense_op(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                    const ConvGeometry* conv) {
  if (!conv) return at::linear(input, weight, bias);
  if (conv->padding_str)
    return at::conv2d(input, weight, bias, conv->stride, *conv->padding_str, conv->dilation, conv->groups);
  return at::conv2d(input, weight, bias, conv->stride, conv->padding, conv->dilation, conv->groups);
}

// The dense layer's own error for an input it rejects: its op with a zero weight of the layer's dtype
// (a generic error should that op accept the input after all).
[[noreturn]] void raise_dense_error(const at::Tensor& input, at::ScalarType dtype,
                                    const std::optional<at::Tensor>& bias, at::IntArrayRef weight_shape,
                                    const ConvGeometry* conv) {
  dense_op(input, at::zeros(weight_shape, input.options().dtype(dtype)), bias, conv);
  TORCH_CHECK(false, "patsparse: the input (", input.scalar_type(), " ", input.sym_sizes(), ") does not fit the layer (",
              dtype, " weight ", weight_shape, ")");
}

void check_weight_shape(at::IntArrayRef weight_shape, bool conv, const char* op) {
  TORCH_CHECK(weight_shape.size() == (conv ? 4u : 2u), "patsparse::", op, ": weight_shape must be ",
              conv ? "[out, in / groups, kh, kw]" : "[out, in]", ", got ", weight_shape);
  for (int64_t d : weight_shape) TORCH_CHECK(d >= 0, "patsparse::", op, ": negative size in weight_shape ", weight_shape);
}

// A clamp bound as the product ops take it: +-inf as +-DBL_MAX (ops.clamp_bound: an infinite float
// argument does not survive AOTInductor's package format; the kernels read it back as +-inf).
double finite_bound(double v) {
  const double m = std::numeric_limits<double>::max();
  return v > m ? m : (v < -m ? -m : v);
}

std::optional<at::Tensor> as_dtype(const std::optional<at::Tensor>& t, at::ScalarType dtype) {
  if (!t) return std::nullopt;
  return t->to(dtype);
}

at::Tensor native_layer(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                        const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                        const std::optional<at::Tensor>& bias, at::IntArrayRef weight_shape, const ConvGeometry* conv,
                        const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                        const std::optional<at::Tensor>& residual, double lo, double hi) {
  const bool accepted = conv ? (input.dim() == 3 || input.dim() == 4) && input.sym_size(-3) == weight_shape[1]
                             : input.dim() >= 1 && input.sym_size(-1) == weight_shape[1];
  if (!accepted || !input.is_floating_point() || dtypes_clash(input, values.scalar_type()))
    raise_dense_error(input, values.scalar_type(), bias, weight_shape, conv);
  const bool unbatched = conv && input.dim() == 3;
  const at::ScalarType compute = input.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::Tensor x = (unbatched ? input.unsqueeze(0) : input).to(compute);
  std::optional<at::Tensor> res = as_dtype(residual, compute);
  if (res && unbatched && res->dim() == 3) res = res->unsqueeze(0);
  const at::Tensor v = values.to(at::kFloat), cs = code_scale.to(at::kFloat);
  const std::optional<at::Tensor> sc = as_dtype(scale, compute), sh = as_dtype(shift, compute);
  lo = finite_bound(lo);
  hi = finite_bound(hi);
  at::Tensor out;
  if (conv) {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("patsparse::sparse_conv1x1", "")
                         .typed<decltype(sparse_conv1x1_cpu)>();
    out = op.call(x, header, index, codes, v, cs, weight_shape[0], sc, sh, res, conv->stride, lo, hi);
  } else {
    static auto op = c10::Dispatcher::singleton().findSchemaOrThrow("patsparse::sparse_linear", "")
                         .typed<decltype(sparse_linear_cpu)>();
    out = op.call(x, header, index, codes, v, cs, weight_shape[0], sc, sh, res, lo, hi);
  }
  if (out.scalar_type() != input.scalar_type()) out = out.to(input.scalar_type());
  if (unbatched) out = out.squeeze(0);
  const c10::DeviceType device = out.device().type();  // nn.Conv2d / nn.Linear's dtype under autocast
  if (out.scalar_type() != at::kDouble && (device == c10::DeviceType::CPU || device == c10::DeviceType::CUDA) &&
      at::autocast::is_autocast_enabled(device))
    out = out.to(at::autocast::get_autocast_dtype(device));
  return out;
}

at::Tensor decoded_layer(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                         const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                         const std::optional<at::Tensor>& bias, at::IntArrayRef weight_shape,
                         const ConvGeometry* conv) {
  if (!input.is_floating_point() || dtypes_clash(input, values.scalar_type()))
    raise_dense_error(input, values.scalar_type(), bias, weight_shape, conv);
  static auto decode =
      c10::Dispatcher::singleton().findSchemaOrThrow("patsparse::sparse_decode", "").typed<decltype(sparse_decode)>();
  const at::ScalarType dtype = input.scalar_type();
  const at::Tensor w = decode.call(header, index, codes, values.to(at::kFloat), code_scale.to(at::kFloat), weight_shape);
  return dense_op(input, w.to(dtype), as_dtype(bias, dtype), conv);
}

at::Tensor sparse_conv1x1_layer(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                                const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                                const std::optional<at::Tensor>& bias, at::IntArrayRef weight_shape,
                                at::IntArrayRef stride, const std::optional<at::Tensor>& scale,
                                const std::optional<at::Tensor>& shift, const std::optional<at::Tensor>& residual,
                                double lo, double hi) {
  check_weight_shape(weight_shape, true, "sparse_conv1x1_layer");
  TORCH_CHECK(weight_shape[2] == 1 && weight_shape[3] == 1,
              "patsparse::sparse_conv1x1_layer: weight_shape must be [out, in, 1, 1], got ", weight_shape);
  const int64_t zeros[2] = {0, 0}, ones[2] = {1, 1};
  const ConvGeometry g{stride, zeros, ones, 1, std::nullopt};
  return native_layer(input, header, index, codes, values, code_scale, bias, weight_shape, &g, scale, shift, residual,
                      lo, hi);
}

at::Tensor sparse_linear_layer(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                               const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                               const std::optional<at::Tensor>& bias, at::IntArrayRef weight_shape,
                               const std::optional<at::Tensor>& scale, const std::optional<at::Tensor>& shift,
                               const std::optional<at::Tensor>& residual, double lo, double hi) {
  check_weight_shape(weight_shape, false, "sparse_linear_layer");
  return native_layer(input, header, index, codes, values, code_scale, bias, weight_shape, nullptr, scale, shift,
                      residual, lo, hi);
}

at::Tensor sparse_conv2d_decoded(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                                 const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef weight_shape,
                                 at::IntArrayRef stride, at::IntArrayRef padding, at::IntArrayRef dilation,
                                 int64_t groups, std::optional<c10::string_view> padding_str) {
  check_weight_shape(weight_shape, true, "sparse_conv2d_decoded");
  const ConvGeometry g{stride, padding, dilation, groups, padding_str};
  return decoded_layer(input, header, index, codes, values, code_scale, bias, weight_shape, &g);
}

at::Tensor sparse_linear_decoded(const at::Tensor& input, const at::Tensor& header, const at::Tensor& index,
                                 const at::Tensor& codes, const at::Tensor& values, const at::Tensor& code_scale,
                                 const std::optional<at::Tensor>& bias, at::IntArrayRef weight_shape) {
  check_weight_shape(weight_shape, false, "sparse_linear_decoded");
  return decoded_layer(input, header, index, codes, values, code_scale, bias, weight_shape, nullptr);
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
  m.def("sparse_conv1x1_layer(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape, int[2] stride, Tensor? scale, Tensor? shift, "
        "Tensor? residual, float lo, float hi) -> Tensor");
  m.def("sparse_linear_layer(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape, Tensor? scale, Tensor? shift, Tensor? residual, "
        "float lo, float hi) -> Tensor");
  m.def("sparse_conv2d_decoded(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape, int[2] stride, int[2] padding, int[2] dilation, "
        "int groups, str? padding_str) -> Tensor");
  m.def("sparse_linear_decoded(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, Tensor? bias, int[] weight_shape) -> Tensor");
}

TORCH_LIBRARY_IMPL(patsparse, CompositeImplicitAutograd, m) {
  m.impl("sparse_conv1x1_layer", &sparse_conv1x1_layer);
  m.impl("sparse_linear_layer", &sparse_linear_layer);
  m.impl("sparse_conv2d_decoded", &sparse_conv2d_decoded);
  m.impl("sparse_linear_decoded", &sparse_linear_decoded);
}

TORCH_LIBRARY_IMPL(patsparse, CPU, m) {
  m.impl("sparse_conv1x1", &sparse_conv1x1_cpu);
  m.impl("sparse_linear", &sparse_linear_cpu);
  m.impl("sparse_dense_weight", &sparse_dense_weight_cpu);
  m.impl("sparse_decode", &sparse_decode);
}
TORCH_LIBRARY_IMPL(patsparse, CUDA, m) { m.impl("sparse_decode", &sparse_decode); }

}  // namespace patsparse
