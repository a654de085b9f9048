// patsparse_run: loads an exported TorchScript model (torch_patsparse.export.torchscript) or, with
// --lite, a lite-interpreter file (export.mobile), runs it on a fixed deterministic input and
// prints the output values and the timing. Linked against libpatsparse_ops, which registers the
// patsparse:: ops with libtorch: this is what a C++ / mobile app has to do (docs/MOBILE.md).
//
//   patsparse_run MODEL.pt [--shape N,C,H,W] [--repeat R] [--threads T] [--isa NAME] [--lite] [--no-values]
//
// Input (default shape 1,3,32,32), float32 NCHW contiguous, element i of the flattened tensor:
//   x[i] = float(((i * 7919) % 1000) / 500.0 - 1.0)            (computed in double, then rounded)
// Python: ((torch.arange(n, dtype=torch.int64) * 7919) % 1000).double().div(500).sub(1).float()
// Output (stdout):
//   input: 1 3 32 32
//   output: <sizes>
//   <one value per line, printf %.9g, flattened output (first tensor if the model returns a tuple)>
//   time_ms: median <m> min <m> runs <R> threads <T> isa <name>
#include <torch/script.h>
#include <torch/csrc/jit/mobile/import.h>
#include <torch/csrc/jit/mobile/module.h>

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void usage(const char* msg) {
  std::fprintf(stderr, "patsparse_run: %s\nusage: patsparse_run MODEL.pt [--shape N,C,H,W] [--repeat R] "
               "[--threads T] [--isa scalar|avx2|avx512|neon|auto] [--lite] [--no-values]\n", msg);
  std::exit(2);
}

std::vector<int64_t> parse_shape(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    try { out.push_back(std::stoll(item)); } catch (...) { usage(("bad --shape " + s).c_str()); }
  }
  if (out.size() != 4) usage("--shape needs 4 comma-separated sizes N,C,H,W");
  return out;
}

at::Tensor deterministic_input(const std::vector<int64_t>& shape) {
  at::Tensor x = at::empty(shape, at::kFloat);
  float* p = x.data_ptr<float>();
  for (int64_t i = 0; i < x.numel(); ++i)
    p[i] = static_cast<float>(static_cast<double>((i * 7919) % 1000) / 500.0 - 1.0);
  return x;
}

at::Tensor first_tensor(const c10::IValue& v) {
  if (v.isTensor()) return v.toTensor();
  if (v.isTuple())
    for (const auto& e : v.toTupleRef().elements())
      if (e.isTensor()) return e.toTensor();
  if (v.isTensorList() && v.toTensorList().size() > 0) return v.toTensorList().get(0);
  std::fprintf(stderr, "patsparse_run: the model returned %s, expected a tensor\n", v.tagKind().c_str());
  std::exit(1);
}

}  // namespace

int run_main(int argc, char** argv) {
  if (argc < 2) usage("missing MODEL.pt");
  std::string path = argv[1], isa;
  std::vector<int64_t> shape = {1, 3, 32, 32};
  int repeat = 5, threads = 0;
  bool lite = false, print_values = true;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    auto next = [&]() -> std::string { if (i + 1 >= argc) usage((a + " needs a value").c_str()); return argv[++i]; };
    if (a == "--shape") shape = parse_shape(next());
    else if (a == "--repeat") repeat = std::max(1, std::atoi(next().c_str()));
    else if (a == "--threads") threads = std::atoi(next().c_str());
    else if (a == "--isa") isa = next();
    else if (a == "--lite") lite = true;
    else if (a == "--no-values") print_values = false;
    else usage(("unknown argument " + a).c_str());
  }

  // The op library registers itself from static initialisers; if the linker dropped it, say so
  // here instead of failing later with "Unknown builtin op".
  auto& dispatcher = c10::Dispatcher::singleton();
  if (!dispatcher.findSchema({"patsparse::pattern_conv2d", ""})) {
    std::fprintf(stderr, "patsparse_run: patsparse::pattern_conv2d is not registered: link libpatsparse_ops "
                 "with -Wl,--no-as-needed (shared) or -Wl,--whole-archive (static)\n");
    return 1;
  }
  if (threads > 0) at::set_num_threads(threads);
  if (!isa.empty()) {
    try {
      dispatcher.findSchemaOrThrow("patsparse::set_isa", "").typed<std::string(const std::string&)>().call(isa);
    } catch (const c10::Error& e) {
      std::fprintf(stderr, "patsparse_run: %s\n", e.what_without_backtrace());
      return 1;
    }
  }
  auto get_isa = dispatcher.findSchemaOrThrow("patsparse::get_isa", "").typed<std::string()>();

  const at::Tensor x = deterministic_input(shape);
  std::vector<c10::IValue> inputs{x};
  std::function<c10::IValue()> run;
  torch::jit::Module module;
  std::unique_ptr<torch::jit::mobile::Module> mobile_module;
  try {
    if (lite) {
      mobile_module = std::make_unique<torch::jit::mobile::Module>(torch::jit::_load_for_mobile(path));
      run = [&] { return mobile_module->forward(inputs); };
    } else {
      module = torch::jit::load(path);
      module.eval();
      run = [&] { return module.forward(inputs); };
    }
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "patsparse_run: cannot load %s: %s%s\n", path.c_str(), e.what_without_backtrace(),
                 lite ? "\n(--lite takes a file of export.mobile; a TorchScript file runs without --lite)" : "");
    return 1;
  }

  c10::InferenceMode guard;
  at::Tensor out = first_tensor(run()).contiguous().to(at::kFloat);  // warm-up run, also the printed one
  std::vector<double> ms;
  for (int r = 0; r < repeat; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    c10::IValue v = run();
    const auto t1 = std::chrono::steady_clock::now();
    ms.push_back(std::chrono::duration<double, std::milli>(t1 - t0).count());
  }
  std::sort(ms.begin(), ms.end());

  std::printf("input:");
  for (int64_t s : shape) std::printf(" %lld", static_cast<long long>(s));
  std::printf("\noutput:");
  for (int64_t s : out.sizes()) std::printf(" %lld", static_cast<long long>(s));
  std::printf("\n");
  if (print_values) {
    const float* p = out.data_ptr<float>();
    for (int64_t i = 0; i < out.numel(); ++i) std::printf("%.9g\n", p[i]);
  }
  std::printf("time_ms: median %.4f min %.4f runs %d threads %d isa %s\n", ms[ms.size() / 2], ms.front(), repeat,
              at::get_num_threads(), get_isa.call().c_str());
  return 0;
}

int main(int argc, char** argv) {
  // Any error while the model runs (a wrong --shape for it, a kernel refusing its input): its message
  // and exit status 1, not std::terminate.
  try {
    return run_main(argc, argv);
  } catch (const c10::Error& e) {
    std::fprintf(stderr, "patsparse_run: %s\n", e.what_without_backtrace());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "patsparse_run: %s\n", e.what());
  }
  return 1;
}
