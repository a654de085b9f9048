// Fuzz-style test of the torch-free core over random and corrupted compressed arrays (no torch):
//   1. the duplicate (filter, channel) rule of validate_format, on both of its code paths
//      (small Cin: per-channel stamp array; Cin >> nnz: per-filter sort);
//   2. a seeded fuzz: random pattern sets (K 1..12, E 1..9), random weights, then one corruption
//      (bit flips in any index array, extreme channel / pattern / filter_ptr values, duplicates,
//      wrong in_channels). validate_format must agree with an independent oracle; what it rejects,
//      build_plan must reject with std::invalid_argument; what it accepts must match a dense conv
//      of the same arrays on every ISA path (serial and threaded plan), with guard zones around the
//      output, over random stride / padding / dilation;
//   3. random geometry with huge / negative / zero values: check_shape rejects, forward_f32 agrees,
//      and every accepted shape small enough to run matches the reference on every path.
// Every array is allocated at its exact size, so under the sanitizer lane (scripts/test_cpp.sh,
// PATSPARSE_SANITIZE=ON) any read past an array is reported. Prints "test_fuzz_format: N passed, M failed".
#include <climits>
#include <set>
#include <stdexcept>

#include "csrc/kernels/dispatch.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using namespace patsparse_test;

namespace {

// Independent statement of the format's rules (DESIGN.md) for the oracle.
bool oracle_valid(const Compressed& c, int64_t cin) {
  const int64_t K = c.num_patterns, E = c.entries, nnz = static_cast<int64_t>(c.kernel_channel.size());
  if (K < 1 || K > 256 || E < 1 || E > 9 || cin < 0) return false;
  for (int64_t p = 0; p < K; ++p) {
    std::set<int> row;
    for (int64_t e = 0; e < E; ++e) {
      const int pos = c.patterns[p * E + e];
      if (pos > 8 || !row.insert(pos).second) return false;
    }
  }
  if (c.filter_ptr[0] != 0 || c.filter_ptr[c.cout] != nnz) return false;
  for (int64_t o = 0; o < c.cout; ++o)
    if (c.filter_ptr[o + 1] < c.filter_ptr[o]) return false;
  for (int64_t k = 0; k < nnz; ++k)
    if (c.kernel_channel[k] < 0 || c.kernel_channel[k] >= cin || c.kernel_pattern[k] >= K) return false;
  for (int64_t o = 0; o < c.cout; ++o) {
    std::set<int32_t> chans;
    for (int64_t k = c.filter_ptr[o]; k < c.filter_ptr[o + 1]; ++k)
      if (!chans.insert(c.kernel_channel[k]).second) return false;
  }
  return true;
}

// Dense [Cout, cin, 9] weight of (valid) arrays.
std::vector<double> dense_of(const Compressed& c, int64_t cin) {
  std::vector<double> d(static_cast<size_t>(c.cout * cin * 9), 0.0);
  for (int64_t o = 0; o < c.cout; ++o)
    for (int64_t k = c.filter_ptr[o]; k < c.filter_ptr[o + 1]; ++k)
      for (int64_t e = 0; e < c.entries; ++e)
        d[(o * cin + c.kernel_channel[k]) * 9 + c.patterns[c.kernel_pattern[k] * c.entries + e]] +=
            c.values[k * c.entries + e];
  return d;
}

std::vector<uint8_t> random_patterns(Rng& rng, int64_t K, int64_t E) {
  std::vector<uint8_t> p;
  for (int64_t r = 0; r < K; ++r) {
    uint8_t perm[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    for (int i = 8; i > 0; --i) std::swap(perm[i], perm[rng.below(i + 1)]);
    p.insert(p.end(), perm, perm + E);
  }
  return p;
}

template <typename T>
void flip_bit(Rng& rng, std::vector<T>& v) {
  if (v.empty()) return;
  auto* bytes = reinterpret_cast<uint8_t*>(v.data());
  const size_t i = static_cast<size_t>(rng.below(static_cast<int64_t>(v.size() * sizeof(T))));
  bytes[i] ^= static_cast<uint8_t>(1u << rng.below(8));
}

// Applies one corruption; may change *cin. Returns its name.
std::string corrupt(Rng& rng, Compressed& c, int64_t* cin) {
  const int64_t nnz = static_cast<int64_t>(c.kernel_channel.size());
  static const int32_t extremes[] = {INT32_MIN, -1, 0, 1, INT32_MAX, 255, 256, 65535};
  switch (rng.below(12)) {
    case 0: return "none";
    case 1: flip_bit(rng, c.patterns); return "flip patterns";
    case 2: flip_bit(rng, c.filter_ptr); return "flip filter_ptr";
    case 3: flip_bit(rng, c.kernel_channel); return "flip kernel_channel";
    case 4: flip_bit(rng, c.kernel_pattern); return "flip kernel_pattern";
    case 5:
      if (nnz) c.kernel_channel[rng.below(nnz)] = extremes[rng.below(8)];
      return "extreme kernel_channel";
    case 6:
      if (nnz) c.kernel_pattern[rng.below(nnz)] = static_cast<uint8_t>(c.num_patterns + rng.below(3) - 1);
      return "kernel_pattern near K";
    case 7:
      c.filter_ptr[rng.below(c.cout + 1)] = extremes[rng.below(8)];
      return "extreme filter_ptr";
    case 8: {  // copy a channel inside one filter (the defect: forward summed, to_dense kept one)
      for (int64_t tries = 0; tries < 8; ++tries) {
        const int64_t o = rng.below(c.cout);
        const int64_t n = c.filter_ptr[o + 1] - c.filter_ptr[o];
        if (n < 2) continue;
        const int64_t a = c.filter_ptr[o] + rng.below(n), b = c.filter_ptr[o] + rng.below(n);
        c.kernel_channel[a] = c.kernel_channel[b];
        return "duplicate channel";
      }
      return "duplicate channel (none possible)";
    }
    case 9: {
      static const int64_t cins[] = {-1, 0, 1, int64_t(1) << 40, INT64_MAX};
      *cin = rng.below(2) ? *cin - 1 : cins[rng.below(5)];
      return "in_channels " + std::to_string(*cin);
    }
    case 10:
      c.patterns[rng.below(static_cast<int64_t>(c.patterns.size()))] = static_cast<uint8_t>(rng.below(256));
      return "random pattern byte";
    default:
      c.num_patterns = rng.below(2) ? 0 : 257;  // rejected before any patterns[] read
      return "num_patterns out of range";
  }
}

void duplicate_rule(Counter& t) {
  // 3 filters over 4 channels; filter 1 lists channel 2 twice (not adjacent).
  Compressed c = random_weights(3, 4, 1.0, 1, 11);
  t.check(error_of([&] { validate(c.view(), 4); }).empty(), "dup rule: valid weights validate");
  t.check(error_of([&] { validate(c.view(), int64_t(1) << 40); }).empty(), "dup rule: valid weights validate (sort path)");
  for (int64_t cin : {int64_t(4), int64_t(1) << 40}) {
    const std::string path = cin == 4 ? " (stamp path)" : " (sort path)";
    auto d = c;
    d.kernel_channel[4] = d.kernel_channel[6];
    const std::string err = error_of([&] { validate(d.view(), cin); });
    t.check(err.find("filter 1") != std::string::npos && err.find("twice") != std::string::npos,
            "dup in filter 1 rejected with a message naming it" + path + ": '" + err + "'");
    auto e = c;
    e.kernel_channel[11] = e.kernel_channel[10];  // adjacent, in the last filter
    t.check(!error_of([&] { validate(e.view(), cin); }).empty(), "adjacent dup in the last filter rejected" + path);
    try {
      build_plan(d.view(), cin);
      t.check(false, "build_plan accepted a duplicate" + path);
    } catch (const std::invalid_argument&) {
      t.check(true, "");
    }
  }
  // The same channel in different filters is the normal case.
  Compressed s = random_weights(4, 1, 1.0, 1, 12);
  t.check(error_of([&] { validate(s.view(), 1); }).empty(), "same channel in different filters accepted");
}

void fuzz(Counter& t, uint64_t seed, int cases) {
  Rng rng(seed);
  int accepted = 0, rejected = 0;
  for (int i = 0; i < cases; ++i) {
    const int64_t cout = 1 + rng.below(9), cin0 = 1 + rng.below(9);
    const int64_t E = 1 + rng.below(9), K = 1 + rng.below(12);
    Compressed c = random_weights(cout, cin0, rng.uniform(), 1 + rng.below(4), rng.next(),
                                  random_patterns(rng, K, E), E);
    int64_t cin = cin0;
    const std::string what = corrupt(rng, c, &cin);
    const std::string tag = "case " + std::to_string(i) + " (seed " + std::to_string(seed) + ", " + what + ")";
    const bool want = oracle_valid(c, cin);
    const std::string err = error_of([&] { validate(c.view(), cin); });
    t.check(err.empty() == want, tag + ": validate says '" + err + "', oracle says " + (want ? "valid" : "invalid"));
    if (!err.empty()) {
      ++rejected;
      if (c.num_patterns >= 1 && c.num_patterns <= 256) {  // a plan copies patterns first: only sane K
        bool threw = false;
        try { build_plan(c.view(), cin); } catch (const std::invalid_argument&) { threw = true; }
        t.check(threw, tag + ": build_plan did not throw invalid_argument");
      }
      continue;
    }
    ++accepted;
    if (cin > 64) continue;  // a valid 2^40-channel layer: validated, too big to run
    // Accepted: the conv of these arrays equals the dense conv, on every path.
    ConvShape s;
    s.batch = rng.below(3); s.in_channels = cin; s.out_channels = cout;
    s.in_h = 1 + rng.below(12); s.in_w = 1 + rng.below(20);
    s.stride_h = 1 + rng.below(rng.below(8) == 0 ? 40 : 3); s.stride_w = 1 + rng.below(rng.below(8) == 0 ? 40 : 3);
    s.pad_h = rng.below(5); s.pad_w = rng.below(5); s.dil_h = 1 + rng.below(4); s.dil_w = 1 + rng.below(4);
    s.out_h = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
    s.out_w = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
    if (s.out_h <= 0 || s.out_w <= 0) continue;
    const auto x = random_input(s.batch * s.in_channels * s.in_h * s.in_w, rng.next());
    const auto bias = random_input(cout, rng.next());
    const float* b = rng.below(2) ? bias.data() : nullptr;
    const auto want_out = dense_conv(s, dense_of(c, cin), x.data(), b);
    const size_t out_n = want_out.size();
    std::vector<float> ref(out_n, NAN);
    reference_forward<float>(s, c.view(), x.data(), b, ref.data());
    t.check(tolerance_ratio(ref, want_out, 1e-5, 1e-5) <= 1.0, tag + ": reference vs dense");
    const auto plan = build_plan(c.view(), cin);
    for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      const size_t guard = 32;
      std::vector<float> buf(out_n + 2 * guard, -12345.f);
      std::fill(buf.begin() + guard, buf.begin() + guard + out_n, NAN);
      const bool threaded = rng.below(2);
      forward_f32(isa, s, c.view(), plan.get(), x.data(), b, buf.data() + guard,
                  threaded ? ParallelFor(threaded_for) : ParallelFor(serial_for), threaded ? 3 : 1);
      std::vector<float> got(buf.begin() + guard, buf.begin() + guard + out_n);
      bool guards_ok = true;
      for (size_t j = 0; j < guard; ++j) guards_ok &= buf[j] == -12345.f && buf[guard + out_n + j] == -12345.f;
      t.check(tolerance_ratio(got, ref, 1e-5, 1e-5) <= 1.0, tag + ": " + isa_name(isa) + " vs reference");
      t.check(guards_ok, tag + ": " + isa_name(isa) + " wrote outside the output");
    }
  }
  std::printf("fuzz seed %llu: %d cases, %d accepted, %d rejected\n", (unsigned long long)seed, cases, accepted,
              rejected);
}

// Random geometry, huge values included: check_shape decides; what it rejects forward_f32 must
// reject (std::invalid_argument), what it accepts every path must compute like the reference
// (run when small enough to allocate). Under the sanitizer lane any overflow in the shape or slab
// arithmetic is a report.
void geometry_fuzz(Counter& t, uint64_t seed, int cases) {
  Rng rng(seed);
  static const int64_t pool[] = {0, 1, 2, 3, 5, 17, -1, 65536, int64_t(1) << 31, int64_t(1) << 32,
                                 (int64_t(1) << 62) - 1, INT64_MAX, INT64_MIN};
  auto pick = [&](int64_t lo_small, int64_t hi_small) {
    return rng.below(3) ? lo_small + rng.below(hi_small - lo_small + 1) : pool[rng.below(13)];
  };
  const Compressed w = random_weights(2, 3, 0.7, 1, seed);
  int ran = 0;
  for (int i = 0; i < cases; ++i) {
    ConvShape s;
    s.batch = pick(0, 2); s.in_channels = 3; s.out_channels = 2;
    s.in_h = pick(0, 9); s.in_w = pick(0, 9);
    s.stride_h = pick(1, 3); s.stride_w = rng.below(2) ? s.stride_h : pick(1, 3);
    s.pad_h = pick(0, 2); s.pad_w = rng.below(2) ? s.pad_h : pick(0, 2);
    s.dil_h = pick(1, 2); s.dil_w = rng.below(2) ? s.dil_h : pick(1, 2);
    s.out_h = conv_out_size(s.in_h, s.pad_h, s.dil_h, s.stride_h);
    s.out_w = conv_out_size(s.in_w, s.pad_w, s.dil_w, s.stride_w);
    if (rng.below(10) == 0) s.out_h += 1;  // inconsistent output size
    char tag[200];
    std::snprintf(tag, sizeof tag, "geometry case %d: N=%lld H=%lld W=%lld stride=(%lld,%lld) pad=(%lld,%lld) dil=(%lld,%lld)",
                  i, (long long)s.batch, (long long)s.in_h, (long long)s.in_w, (long long)s.stride_h,
                  (long long)s.stride_w, (long long)s.pad_h, (long long)s.pad_w, (long long)s.dil_h, (long long)s.dil_w);
    const std::string err = error_of([&] { check_shape(s); });
    if (!err.empty()) {
      for (Isa isa : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon}) {
        if (!isa_supported(isa)) continue;
        bool threw = false;
        try { forward_f32(isa, s, w.view(), nullptr, nullptr, nullptr); } catch (const std::invalid_argument&) { threw = true; }
        t.check(threw, std::string(tag) + ": " + isa_name(isa) + " accepted a shape check_shape rejects (" + err + ")");
      }
      continue;
    }
    const double in_n = double(s.batch) * 3 * double(s.in_h) * double(s.in_w);
    const double out_n = double(s.batch) * 2 * double(s.out_h) * double(s.out_w);
    // The loops run per image and output row / column, even when the other axis is empty.
    if (in_n > (1 << 20) || out_n > (1 << 16) || s.batch > 4 || s.out_h > 4096 || s.out_w > 4096) continue;
    ++ran;
    const auto x = random_input(static_cast<int64_t>(in_n), rng.next());
    std::vector<float> ref(static_cast<size_t>(out_n), NAN);
    reference_forward<float>(s, w.view(), x.data(), nullptr, ref.data());
    for (Isa isa : {Isa::Avx2, Isa::Avx512, Isa::Neon}) {
      if (!isa_supported(isa)) continue;
      std::vector<float> got(static_cast<size_t>(out_n), NAN);
      try {
        forward_f32(isa, s, w.view(), nullptr, x.data(), nullptr, got.data(), serial_for, 1);
        t.check(tolerance_ratio(got, ref, 1e-5, 1e-5) <= 1.0, std::string(tag) + ": " + isa_name(isa) + " vs reference");
      } catch (const std::exception& e) {
        t.check(false, std::string(tag) + ": " + isa_name(isa) + " threw on a valid shape: " + e.what());
      }
    }
  }
  std::printf("geometry fuzz seed %llu: %d cases, %d run\n", (unsigned long long)seed, cases, ran);
}

}  // namespace

int main(int argc, char** argv) {
  // Optional: test_fuzz_format SEED CASES (a longer run by hand).
  const uint64_t seed = argc > 1 ? std::strtoull(argv[1], nullptr, 10) : 20240612;
  const int cases = argc > 2 ? std::atoi(argv[2]) : 3000;
  Counter t;
  duplicate_rule(t);
  fuzz(t, seed, cases);
  geometry_fuzz(t, seed + 1, cases);
  return t.finish("test_fuzz_format");
}
