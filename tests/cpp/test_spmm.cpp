// Torch-free test of the sparse 1x1 conv / Linear core (csrc/kernels/spmm.h): weights encoded here
// in sparse.py's stored format (bitmap and relative index with escapes, fp32 values, uniform and
// pow2 codes), decoded by build_sparse_index, multiplied on every ISA path this machine runs
// (column, gather and generic-stride layouts, epilogue variants, serial and threaded) and compared
// with a naive double product; corrupt arrays must throw; the cache must be content-keyed.
// Runs under ASan/UBSan in CI (scripts/test_cpp.sh) and under qemu on aarch64 (arm/test.sh).
#include <cmath>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "csrc/kernels/dispatch.h"
#include "csrc/kernels/spmm.h"
#include "tests/cpp/test_util.h"

using namespace patsparse;
using patsparse_test::Counter;
using patsparse_test::Rng;

namespace {

struct BitWriter {  // bitpack.pack's layout: LSB first
  std::vector<uint8_t> bytes;
  int64_t bits = 0;
  void put(uint64_t v, int width) {
    for (int i = 0; i < width; ++i, ++bits) {
      if (bits % 8 == 0) bytes.push_back(0);
      bytes.back() |= static_cast<uint8_t>(((v >> i) & 1) << (bits % 8));
    }
  }
};

struct Encoded {
  int64_t rows = 0, cols = 0;
  std::vector<uint8_t> header, index, codes;
  std::vector<float> values, code_scale;
  std::vector<double> dense;  // what the arrays stand for
  StoredSparse view() const {
    StoredSparse s;
    s.rows = rows;
    s.cols = cols;
    s.header = header.data();
    s.header_bytes = static_cast<int64_t>(header.size());
    s.index = index.data();
    s.index_bytes = static_cast<int64_t>(index.size());
    s.codes = codes.data();
    s.codes_bytes = static_cast<int64_t>(codes.size());
    s.num_values = static_cast<int64_t>(values.size());
    s.code_scale = code_scale.data();
    s.num_code_scale = static_cast<int64_t>(code_scale.size());
    return s;
  }
};

// scheme: 0 fp32 values, 1 uniform codes, 2 pow2 codes (bits 1..8); width 0: bitmap index; block B:
// rows B*g..B*g+B-1 keep the same columns (a Bx1 block structure; row 1 stays empty all the same).
Encoded encode(int64_t rows, int64_t cols, double keep, int width, int scheme, int bits, uint64_t seed,
               int64_t block = 1) {
  Rng rng(seed);
  Encoded e;
  e.rows = rows;
  e.cols = cols;
  const int64_t numel = rows * cols;
  std::vector<uint8_t> kept;  // [ceil(rows / block) * cols] with a block structure
  for (int64_t i = 0; block > 1 && i < (rows + block - 1) / block * cols; ++i) kept.push_back(rng.uniform() < keep);
  e.dense.assign(static_cast<size_t>(numel), 0.0);
  const int m = bits <= 2 ? 1 : (1 << (bits - 1)) - 1;
  int code_width = 1;
  while ((1 << code_width) < 2 * m) ++code_width;
  const float scale = 0.0625f * static_cast<float>(1 + rng.below(7));
  std::vector<int64_t> pos;
  BitWriter codes;
  for (int64_t i = 0; i < numel; ++i) {
    const bool in = block > 1 ? kept[static_cast<size_t>(i / cols / block * cols + i % cols)] : rng.uniform() < keep;
    if (!in || (rows > 2 && i / cols == 1)) continue;  // row 1 always empty
    pos.push_back(i);
    if (scheme == 0) {
      float v = static_cast<float>(rng.uniform() * 2 - 1);
      if (v == 0.f) v = 0.5f;
      e.values.push_back(v);
      e.dense[i] = v;
    } else {
      const int sym = static_cast<int>(rng.below(2 * m));
      const int c = sym < m ? sym - m : sym - m + 1;
      codes.put(static_cast<uint64_t>(sym), code_width);
      const float mult = scheme == 1 ? float(c) : (c < 0 ? -1.f : 1.f) * std::ldexp(1.0f, 1 - std::abs(c));
      e.dense[i] = static_cast<double>(mult * scale);
    }
  }
  if (scheme) {
    e.codes = codes.bytes;
    e.code_scale = {scale};
  }
  BitWriter index;
  int64_t nsym = 0;
  if (width == 0) {
    std::vector<uint8_t> bitmap(static_cast<size_t>(numel), 0);
    for (int64_t p : pos) bitmap[p] = 1;
    for (int64_t i = 0; i < numel; ++i) index.put(bitmap[i], 1);
  } else {
    const uint64_t esc = (1u << width) - 1;
    int64_t prev = -1;
    for (int64_t p : pos) {
      uint64_t gap = static_cast<uint64_t>(p - prev - 1);
      for (; gap >= esc; gap -= esc, ++nsym) index.put(esc, width);
      index.put(gap, width);
      ++nsym;
      prev = p;
    }
  }
  e.index = index.bytes;
  int L = 1;
  while ((int64_t(1) << L) <= numel) ++L;
  BitWriter header;
  header.put(width == 0 ? 1 : 0, 1);
  header.put(width == 0 ? 0 : width - 1, 4);
  header.put(scheme, 2);
  header.put(scheme ? bits : 0, 4);
  header.put(pos.size(), L);
  header.put(nsym, L);
  e.header = header.bytes;
  return e;
}

// Naive double product + epilogue over the same strides; mag[at]: sum of the terms' magnitudes
// (fp32 sums in any order are within a few ulps of it).
std::vector<double> expected(const Encoded& e, const SpmmIo<float>& io, size_t y_size, std::vector<double>& mag) {
  std::vector<double> y(y_size, 0.0);
  mag.assign(y_size, 0.0);
  for (int64_t b = 0; b < io.batch; ++b)
    for (int64_t o = 0; o < e.rows; ++o)
      for (int64_t j = 0; j < io.n; ++j) {
        double acc = 0, m = 0;
        for (int64_t k = 0; k < e.cols; ++k) {
          const double t = e.dense[o * e.cols + k] * io.x[b * io.x_image + k * io.x_chan + j * io.x_col];
          acc += t;
          m += std::fabs(t);
        }
        const int64_t at = b * io.y_image + o * io.y_chan + j * io.y_col;
        mag[at] = m * (io.scale ? std::fabs(io.scale[o]) : 1.0) + std::fabs(io.residual ? io.residual[at] : 0.0);
        double v = acc * (io.scale ? io.scale[o] : 1.0) + (io.shift ? io.shift[o] : 0.0) +
                   (io.residual ? io.residual[at] : 0.0);
        v = std::min<double>(std::max<double>(v, io.lo), io.hi);
        y[at] = v;
      }
  return y;
}

enum class Layout { Columns, Gather, Generic };

void check_product(Counter& c, Isa isa, const Encoded& e, int64_t batch, int64_t n, Layout layout, bool epilogue,
                   bool threaded, uint64_t seed) {
  const auto idx = build_sparse_index(e.view());
  const CsrView w = csr_view(*idx, e.values.data());
  SpmmIo<float> io;
  io.batch = batch;
  io.n = n;
  const int64_t cin = e.cols, cout = e.rows;
  if (layout == Layout::Columns) {
    io.x_image = cin * n, io.x_chan = n, io.x_col = 1;
    io.y_image = cout * n, io.y_chan = n, io.y_col = 1;
  } else if (layout == Layout::Gather) {
    io.x_image = cin * n, io.x_chan = 1, io.x_col = cin;
    io.y_image = cout * n, io.y_chan = 1, io.y_col = cout;
  } else {  // both strided: reference on every path
    io.x_image = cin * n * 2, io.x_chan = 2, io.x_col = 2 * cin;
    io.y_image = cout * n, io.y_chan = 1, io.y_col = cout;
  }
  const std::vector<float> x = patsparse_test::random_input(std::max<int64_t>(1, batch * io.x_image), seed);
  std::vector<float> scale, shift, residual = patsparse_test::random_input(std::max<int64_t>(1, batch * io.y_image), seed + 1);
  for (int64_t o = 0; o < cout; ++o) {
    scale.push_back(0.5f + 0.01f * static_cast<float>(o % 50));
    shift.push_back(0.1f * static_cast<float>(o % 7) - 0.3f);
  }
  const size_t y_size = static_cast<size_t>(std::max<int64_t>(1, batch * io.y_image));
  std::vector<float> y(y_size, 12345.f);
  io.x = x.data();
  io.y = y.data();
  if (epilogue) {
    io.scale = scale.data();
    io.shift = shift.data();
    io.residual = residual.data();
    io.lo = -0.25f;
    io.hi = 0.75f;
  }
  spmm_f32(isa, w, io, threaded ? patsparse_test::threaded_for : serial_for, threaded ? 3 : 1);
  std::vector<double> mag;
  const std::vector<double> want = expected(e, io, y_size, mag);
  double worst = 0;
  for (size_t i = 0; i < y_size && batch * n > 0; ++i) {
    const bool written = (batch * io.y_image > 0);
    if (!written) break;
    worst = std::max(worst, std::fabs(y[i] - want[i]) / (1e-6 + 1e-6 * mag[i]));
  }
  char what[200];
  std::snprintf(what, sizeof what, "%s rows=%lld cols=%lld batch=%lld n=%lld layout=%d epi=%d thr=%d: error %.3g",
                isa_name(isa), (long long)cout, (long long)cin, (long long)batch, (long long)n, int(layout),
                int(epilogue), int(threaded), worst);
  c.check(worst <= 1.0 && !std::isnan(worst), what);
}

void check_rejects(Counter& c, const std::string& what, Encoded e) {
  bool threw = false;
  try {
    build_sparse_index(e.view());
  } catch (const std::invalid_argument&) {
    threw = true;
  }
  c.check(threw, "rejects " + what);
}

}  // namespace

int main() {
  Counter c;
  const std::vector<Isa> isas = patsparse_test::supported_isas();
  struct Case { int64_t rows, cols; double keep; int width, scheme, bits; int64_t block; };
  // (block 4: groups of 4 rows sharing their columns run the four-row kernel; group 0 does not share,
  // row 1 being empty, nor do the last rows of 37)
  const Case cases[] = {{1, 1, 1.0, 1, 0, 0, 1},  {5, 3, 0.5, 0, 0, 0, 1},    {9, 17, 0.25, 3, 0, 0, 1},
                        {31, 33, 0.2, 2, 1, 4, 1}, {20, 70, 0.0, 1, 0, 0, 1},  {24, 40, 1.0, 4, 2, 3, 1},
                        {13, 100, 0.05, 2, 1, 1, 1}, {64, 48, 0.2, 0, 1, 8, 1}, {16, 40, 0.3, 0, 0, 0, 4},
                        {37, 70, 0.2, 3, 1, 4, 4}, {64, 48, 0.25, 2, 0, 0, 4}, {8, 5, 1.0, 1, 0, 0, 4}};
  const int64_t ns[] = {1, 3, 16, 49, 130, 200};
  uint64_t seed = 1;
  for (const Case& k : cases) {
    const Encoded e = encode(k.rows, k.cols, k.keep, k.width, k.scheme, k.bits, seed++, k.block);
    if (k.block > 1)
      c.check(!build_sparse_index(e.view())->shared4.empty(), "rows sharing columns in fours are found, rows=" +
                                                                   std::to_string(k.rows));
    {  // the dense weight (sparse_decode's) is exactly what the arrays stand for
      std::vector<float> dense(static_cast<size_t>(k.rows * k.cols), 7.f);
      csr_to_dense(csr_view(*build_sparse_index(e.view()), e.values.data()), dense.data());
      bool same = true;
      for (size_t i = 0; i < dense.size(); ++i) same = same && static_cast<double>(dense[i]) == static_cast<float>(e.dense[i]);
      c.check(same, "csr_to_dense rows=" + std::to_string(k.rows) + " cols=" + std::to_string(k.cols));
    }
    for (Isa isa : isas)
      for (int64_t n : ns)
        for (int64_t batch : {0, 1, 2})
          for (Layout layout : {Layout::Columns, Layout::Gather, Layout::Generic})
            for (bool epi : {false, true})
              check_product(c, isa, e, batch, n, layout, epi, (n + batch) % 2 == 1, seed++);
  }

  {  // more than 65536 columns: 32-bit column indices
    const Encoded wide = encode(3, 70000, 0.002, 8, 0, 0, seed++);
    for (Isa isa : isas)
      for (int64_t n : {1, 17})
        for (Layout layout : {Layout::Columns, Layout::Gather})
          check_product(c, isa, wide, 1, n, layout, true, n > 1, seed++);
    c.check(!build_sparse_index(wide.view())->col.empty(), "wide weight uses 32-bit columns");
  }

  {  // the cache checks the value count on a hit too (values are read at call time, not keyed)
    SparseIndexCache cache;
    for (const Encoded& e : {encode(12, 30, 0.3, 3, 0, 0, 98), encode(12, 30, 0.3, 3, 1, 4, 97)}) {
      cache.get(e.view());
      for (int64_t wrong : {int64_t(0), int64_t(3), static_cast<int64_t>(e.values.size()) + 1}) {
        StoredSparse s = e.view();
        if (wrong == s.num_values) continue;
        s.num_values = wrong;
        bool threw = false;
        try {
          cache.get(s);
        } catch (const std::invalid_argument&) {
          threw = true;
        }
        c.check(threw, "cache hit with " + std::to_string(wrong) + " values instead of " +
                           std::to_string(e.values.size()) + " is rejected");
      }
    }
  }

  // corrupt arrays
  const Encoded good = encode(12, 30, 0.3, 3, 1, 4, 99);
  {
    Encoded e = good; e.header.pop_back(); check_rejects(c, "short header", e);
  }
  {
    Encoded e = good; e.index.pop_back(); check_rejects(c, "short index", e);
  }
  {
    Encoded e = good; e.index.push_back(0); check_rejects(c, "long index", e);
  }
  {
    Encoded e = good; for (auto& b : e.index) b = 0xFF; check_rejects(c, "escape-only index", e);
  }
  {
    Encoded e = good; e.codes.pop_back(); check_rejects(c, "short codes", e);
  }
  {
    Encoded e = good; e.code_scale = {-1.f}; check_rejects(c, "negative scale", e);
  }
  {
    Encoded e = good; e.code_scale = {NAN}; check_rejects(c, "NaN scale", e);
  }
  {
    Encoded e = good; e.values = {1.f}; check_rejects(c, "values beside codes", e);
  }
  {
    Encoded e = good; e.header.back() |= 0x80; check_rejects(c, "header padding bits", e);
  }
  {
    Encoded e = good; e.rows = 2; check_rejects(c, "weight smaller than the index", e);
  }
  {
    Encoded e = encode(12, 30, 0.3, 0, 0, 0, 98); e.values.pop_back(); check_rejects(c, "values count", e);
  }
  {
    Encoded e = encode(12, 30, 0.3, 0, 0, 0, 97); e.index[0] ^= 1; check_rejects(c, "bitmap count", e);
  }
  {  // codes: 3-bit levels, symbol 7 >= 2m = 6 is out of range
    Encoded e = encode(2, 8, 1.0, 1, 1, 3, 96);  // 16 codes of 3 bits: 6 bytes, no padding
    e.codes.assign(e.codes.size(), 0xFF);
    check_rejects(c, "code out of range", e);
  }

  // cache: content-keyed (equal arrays elsewhere hit; one changed byte builds anew)
  SparseIndexCache cache;
  const Encoded a = encode(16, 16, 0.3, 2, 0, 0, 7);
  const Encoded a_copy = a;
  auto p1 = cache.get(a.view()), p2 = cache.get(a_copy.view());
  c.check(p1 == p2 && cache.stats().builds == 1 && cache.stats().hits == 1, "cache hit on equal arrays");
  Encoded b = a;
  b.code_scale = {};
  b.index.back() ^= 0;  // same content
  auto p3 = cache.get(b.view());
  c.check(p3 == p1, "cache hit on a copy");
  Encoded d = encode(16, 16, 0.3, 2, 0, 0, 8);
  auto p4 = cache.get(d.view());
  c.check(p4 != p1 && cache.stats().builds == 2, "cache miss on other arrays");
  return c.finish("test_spmm");
}
