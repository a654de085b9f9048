// Out variants of the inference ops, `patsparse::<op>.out(<the functional op's arguments>, *,
// Tensor(a!) out) -> Tensor(a!)`. ExecuTorch's to_executorch() rewrites every functional call into
// its out variant (so the output lands in a memory-planned buffer) and needs this schema from torch;
// at run time the ExecuTorch kernels of the same schemas (csrc/executorch/ops_et.cpp) do the work.
// The ATen implementations here run the functional op and copy into `out` (resized like
// at::native's out= ops), so eager calls of the out variants give the same numbers as the functional
// ones. Adding an op: one schema line in the fragment, one impl line (out_variant<...> below).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

namespace patsparse {
namespace {

// `out` receives `result` (same dtype required, as for at:: out= ops; resized when its shape differs).
at::Tensor& copy_to_out(const at::Tensor& result, at::Tensor& out) {
  TORCH_CHECK(out.scalar_type() == result.scalar_type(), "patsparse: out has dtype ", out.scalar_type(),
              " but the result is ", result.scalar_type());
  TORCH_CHECK(out.device() == result.device(), "patsparse: out is on ", out.device(), " but the result is on ",
              result.device());
  if (out.sizes() != result.sizes()) out.resize_(result.sizes(), result.suggest_memory_format());
  out.copy_(result);
  return out;
}

// ATen out variant of functional op `Name` (a "patsparse::..." string) with signature Sig.
template <const char* Name, class Sig>
struct OutVariant;
template <const char* Name, class... Args>
struct OutVariant<Name, at::Tensor(Args...)> {
  static at::Tensor& call(Args... args, at::Tensor& out) {
    static const auto op = c10::Dispatcher::singleton().findSchemaOrThrow(Name, "").typed<at::Tensor(Args...)>();
    return copy_to_out(op.call(args...), out);
  }
};

constexpr char kPatternConv2d[] = "patsparse::pattern_conv2d";
using PatternConv2dSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                    at::IntArrayRef, at::IntArrayRef, at::IntArrayRef);
constexpr char kPatternConv2dFused[] = "patsparse::pattern_conv2d_fused";
using PatternConv2dFusedSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                         const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
                                         const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                         at::IntArrayRef, at::IntArrayRef, at::IntArrayRef, double, double);
constexpr char kPatternChannels[] = "patsparse::pattern_channels";
using PatternChannelsSig = at::Tensor(const at::Tensor&);
constexpr char kPatternDecode[] = "patsparse::pattern_decode";
using PatternDecodeSig = at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t, int64_t, c10::string_view);
constexpr char kSparseConv1x1[] = "patsparse::sparse_conv1x1";
using SparseConv1x1Sig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                    const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&,
                                    const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
                                    at::IntArrayRef, double, double);
constexpr char kSparseLinear[] = "patsparse::sparse_linear";
using SparseLinearSig = at::Tensor(const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, const at::Tensor&, int64_t, const std::optional<at::Tensor>&,
                                   const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, double,
                                   double);

}  // namespace

TORCH_LIBRARY_FRAGMENT(patsparse, m) {
  m.def("pattern_conv2d.out(Tensor input, Tensor patterns, Tensor filter_ptr, Tensor kernel_channel, "
        "Tensor kernel_pattern, Tensor values, Tensor? bias, int[2] stride=1, int[2] padding=0, "
        "int[2] dilation=1, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("pattern_conv2d_fused.out(Tensor input, Tensor patterns, Tensor filter_ptr, Tensor kernel_channel, "
        "Tensor kernel_pattern, Tensor values, Tensor? scale, Tensor? shift, Tensor? residual, int[2] stride, "
        "int[2] padding, int[2] dilation, float lo, float hi, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("pattern_channels.out(Tensor kernel_channel, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("pattern_decode.out(Tensor codes, Tensor scale, int kept_kernels, int entries, int bits, str scheme, *, "
        "Tensor(a!) out) -> Tensor(a!)");
  m.def("sparse_conv1x1.out(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, int out_channels, Tensor? scale, Tensor? shift, Tensor? residual, int[2] stride, "
        "float lo, float hi, *, Tensor(a!) out) -> Tensor(a!)");
  m.def("sparse_linear.out(Tensor input, Tensor header, Tensor index, Tensor codes, Tensor values, "
        "Tensor code_scale, int out_features, Tensor? scale, Tensor? shift, Tensor? residual, float lo, "
        "float hi, *, Tensor(a!) out) -> Tensor(a!)");
}

// Device-agnostic: the functional op dispatches to its CPU or CUDA kernel.
TORCH_LIBRARY_IMPL(patsparse, CompositeExplicitAutograd, m) {
  m.impl("pattern_conv2d.out", &OutVariant<kPatternConv2d, PatternConv2dSig>::call);
  m.impl("pattern_conv2d_fused.out", &OutVariant<kPatternConv2dFused, PatternConv2dFusedSig>::call);
  m.impl("pattern_channels.out", &OutVariant<kPatternChannels, PatternChannelsSig>::call);
  m.impl("pattern_decode.out", &OutVariant<kPatternDecode, PatternDecodeSig>::call);
  m.impl("sparse_conv1x1.out", &OutVariant<kSparseConv1x1, SparseConv1x1Sig>::call);
  m.impl("sparse_linear.out", &OutVariant<kSparseLinear, SparseLinearSig>::call);
}

}  // namespace patsparse
