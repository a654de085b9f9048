// Stored sparse weight -> runtime CSR index (spmm.h), and the content-keyed cache of those indices.
// The decode mirrors torch_patsparse/nn/sparse.py's _decode check for check: every array a
// TorchScript file or a C++ caller hands in is validated before a kernel reads through it.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "codes.h"
#include "spmm.h"

namespace patsparse {
namespace {

constexpr int kBitmap = 1;

int bit_length(uint64_t v) { return v ? 64 - __builtin_clzll(v) : 0; }

// Bit `pos` .. pos + width - 1 of an LSB-first stream (header fields: up to 63 bits).
uint64_t read_field(const uint8_t* data, int64_t pos, int width) {
  uint64_t v = 0;
  for (int i = 0; i < width; ++i) {
    const int64_t b = pos + i;
    v |= uint64_t((data[b >> 3] >> (b & 7)) & 1) << i;
  }
  return v;
}

// Flat positions (row-major in W) of the kept weights, validated against nnz and numel.
std::vector<int64_t> decode_positions(const StoredSparse& s, int kind, int width, int64_t nnz, int64_t nsym,
                                      int64_t numel) {
  std::vector<int64_t> pos;
  pos.reserve(static_cast<size_t>(nnz));
  if (kind == kBitmap) {
    if (width != 1 || nsym != 0) throw_invalid("bitmap index must have width 1 and no symbols");
    PackedReader bits("bitmap index", s.index, s.index_bytes, numel, 1);
    for (int64_t i = 0; i < numel; ++i)
      if (s.index[i >> 3] >> (i & 7) & 1) {
        if (static_cast<int64_t>(pos.size()) == nnz) throw_invalid("bitmap has more set bits than the header's nnz");
        pos.push_back(i);
      }
    (void)bits;
    if (static_cast<int64_t>(pos.size()) != nnz)
      throw_invalid("bitmap has " + std::to_string(pos.size()) + " set bits, header says nnz=" + std::to_string(nnz));
    return pos;
  }
  if (nsym > numel) throw_invalid("relative index has more symbols than the weight has entries");
  PackedReader sym("relative index", s.index, s.index_bytes, nsym, width);
  const uint32_t esc = (1u << width) - 1;
  int64_t p = -1;
  for (int64_t i = 0; i < nsym; ++i) {
    const uint32_t v = sym(i);
    if (v == esc) {
      if (i == nsym - 1) throw_invalid("relative index ends with a padding (escape) entry");
      p += esc;  // the last symbol is a value, so an escape past the end is an error already
      if (p >= numel) throw_invalid("relative index points past the end of the weight");
      continue;
    }
    p += int64_t(v) + 1;
    if (p >= numel) throw_invalid("relative index points past the end of the weight");
    if (static_cast<int64_t>(pos.size()) == nnz) throw_invalid("relative index holds more entries than the header's nnz");
    pos.push_back(p);
  }
  if (static_cast<int64_t>(pos.size()) != nnz)
    throw_invalid("relative index holds " + std::to_string(pos.size()) + " entries, header says nnz=" + std::to_string(nnz));
  return pos;
}

// quant.levels / quant.nonzero_code_width / quant.multipliers, for the nonzero codes SparseLinear
// and SparseConv2d store (symbol s < 2m names level s - m for s < m, s - m + 1 otherwise).
std::vector<float> decode_codes(const StoredSparse& s, int scheme, int bits, int64_t nnz) {
  if (bits < 1 || bits > 8) throw_invalid("code bits must be in 1..8, got " + std::to_string(bits));
  if (s.num_values) throw_invalid("a quantized weight stores no fp32 'values'");
  if (s.num_code_scale != 1) throw_invalid("'scale' must hold one finite positive fp32 number");
  const float scale = s.code_scale[0];
  if (!std::isfinite(scale) || !(scale > 0)) throw_invalid("'scale' must hold one finite positive fp32 number");
  const int m = bits <= 2 ? 1 : (1 << (bits - 1)) - 1;
  int width = 1;
  while ((1 << width) < 2 * m) ++width;
  PackedReader sym("codes", s.codes, s.codes_bytes, nnz, width);
  std::vector<float> out(static_cast<size_t>(nnz));
  for (int64_t i = 0; i < nnz; ++i) {
    const int v = static_cast<int>(sym(i));
    if (v >= 2 * m) throw_invalid("code " + std::to_string(v) + " out of range for " + std::to_string(bits) + "-bit levels");
    const int c = v < m ? v - m : v - m + 1;
    const float mult = scheme == 1 ? float(c) : (c < 0 ? -1.f : 1.f) * std::ldexp(1.0f, 1 - (c < 0 ? -c : c));
    out[i] = mult * scale;
    if (!std::isfinite(out[i])) throw_invalid("'scale' times the code levels overflows float32");
  }
  return out;
}

bool same_stored(const SparseIndex& idx, const StoredSparse& s) {
  const int64_t sizes[4] = {s.header_bytes, s.index_bytes, s.codes_bytes, s.num_code_scale * 4};
  if (idx.rows != s.rows || idx.cols != s.cols) return false;
  // The values are not part of the key (read at call time), but their count is checked by the build:
  // a hit must have it right too, or the kernels read past a short array.
  if (s.num_values != (idx.quantized ? 0 : idx.nnz)) return false;
  for (int i = 0; i < 4; ++i)
    if (idx.stored_sizes[i] != sizes[i]) return false;
  const void* parts[4] = {s.header, s.index, s.codes, s.code_scale};
  const uint8_t* p = idx.stored.data();
  for (int i = 0; i < 4; ++i) {
    if (sizes[i] && std::memcmp(p, parts[i], static_cast<size_t>(sizes[i])) != 0) return false;
    p += sizes[i];
  }
  return true;
}

// Marks each group of 4 consecutive rows (from row 0) that keep the same columns (at least one).
void find_shared4(SparseIndex& idx) {
  const std::vector<int32_t>& rp = idx.row_ptr;
  std::vector<uint8_t> shared(static_cast<size_t>(idx.rows / 4), 0);
  bool any = false;
  for (int64_t g = 0; g < idx.rows / 4; ++g) {
    const int64_t o = 4 * g, len = rp[o + 1] - rp[o];
    bool same = len > 0;
    for (int64_t r = 1; r < 4 && same; ++r) {
      const int64_t a = rp[o], b = rp[o + r];
      same = rp[o + r + 1] - b == len &&
             (idx.col16.empty() ? std::equal(&idx.col[a], &idx.col[a] + len, &idx.col[b])
                                : std::equal(&idx.col16[a], &idx.col16[a] + len, &idx.col16[b]));
    }
    shared[g] = same;
    any = any || same;
  }
  if (any) idx.shared4 = std::move(shared);
}

}  // namespace

std::shared_ptr<const SparseIndex> build_sparse_index(const StoredSparse& live) {
  int64_t numel;
  if (live.rows < 0 || live.cols < 0 || !mul_ok(live.rows, live.cols, &numel))
    throw_invalid("weight size out of range");
  if (live.rows >= INT32_MAX || live.cols >= INT32_MAX) throw_invalid("weight dimensions must fit in int32");
  if (live.header_bytes < 0 || live.index_bytes < 0 || live.codes_bytes < 0 || live.num_values < 0 ||
      live.num_code_scale < 0)
    throw_invalid("negative array size");
  // The key bytes are copied first and the index decoded from that copy: a caller's array written
  // in another thread meanwhile cannot give an index that its key does not describe.
  const int64_t sizes[4] = {live.header_bytes, live.index_bytes, live.codes_bytes, live.num_code_scale * 4};
  const void* parts[4] = {live.header, live.index, live.codes, live.code_scale};
  std::vector<uint8_t> stored;
  for (int i = 0; i < 4; ++i) {
    const auto* p = static_cast<const uint8_t*>(parts[i]);
    if (sizes[i]) stored.insert(stored.end(), p, p + sizes[i]);
  }
  std::vector<float> code_scale(static_cast<size_t>(live.num_code_scale));  // (aligned)
  const uint8_t* scale_bytes = stored.data() + sizes[0] + sizes[1] + sizes[2];
  if (sizes[3]) std::memcpy(code_scale.data(), scale_bytes, static_cast<size_t>(sizes[3]));
  StoredSparse s = live;
  s.header = stored.data();
  s.index = stored.data() + sizes[0];
  s.codes = stored.data() + sizes[0] + sizes[1];
  s.code_scale = code_scale.data();
  const int L = bit_length(static_cast<uint64_t>(numel)) > 0 ? bit_length(static_cast<uint64_t>(numel)) : 1;
  const int widths[6] = {1, 4, 2, 4, L, L};
  const int64_t header_bits = 11 + 2 * L;
  if (s.header_bytes != (header_bits + 7) / 8)
    throw_invalid("header has " + std::to_string(s.header_bytes) + " bytes, expected " + std::to_string((header_bits + 7) / 8));
  if (header_bits % 8 && (s.header[s.header_bytes - 1] >> (header_bits % 8)))
    throw_invalid("header has nonzero padding bits");
  uint64_t f[6];
  for (int i = 0, pos = 0; i < 6; pos += widths[i], ++i) f[i] = read_field(s.header, pos, widths[i]);
  const int kind = static_cast<int>(f[0]), width = static_cast<int>(f[1]) + 1, scheme = static_cast<int>(f[2]);
  const int bits = static_cast<int>(f[3]);
  const int64_t nnz = static_cast<int64_t>(f[4]), nsym = static_cast<int64_t>(f[5]);
  if (scheme > 2) throw_invalid("unknown value scheme " + std::to_string(scheme));
  if (nnz > numel) throw_invalid("nnz=" + std::to_string(nnz) + " exceeds the weight's " + std::to_string(numel) + " entries");
  if (nnz >= INT32_MAX) throw_invalid("nnz must fit in int32");

  auto idx = std::make_shared<SparseIndex>();
  idx->rows = s.rows;
  idx->cols = s.cols;
  idx->nnz = nnz;
  const std::vector<int64_t> pos = decode_positions(s, kind, width, nnz, nsym, numel);
  if (scheme == 0) {
    if (bits != 0 || s.codes_bytes || s.num_code_scale)
      throw_invalid("an unquantized weight stores no codes and no scale (bits must be 0)");
    if (s.num_values != nnz)
      throw_invalid("'values' has " + std::to_string(s.num_values) + " entries, expected nnz=" + std::to_string(nnz));
  } else {
    idx->quantized = true;
    idx->decoded = decode_codes(s, scheme, bits, nnz);
  }
  idx->row_ptr.assign(static_cast<size_t>(s.rows + 1), 0);
  const bool narrow = s.cols <= 65536;
  (narrow ? idx->col16.resize(static_cast<size_t>(nnz)) : idx->col.resize(static_cast<size_t>(nnz)));
  for (int64_t i = 0; i < nnz; ++i) {  // positions ascend: rows in order, columns ascending in a row
    idx->row_ptr[static_cast<size_t>(pos[i] / (s.cols ? s.cols : 1) + 1)]++;
    if (narrow) idx->col16[i] = static_cast<uint16_t>(pos[i] % s.cols);
    else idx->col[i] = static_cast<int32_t>(pos[i] % s.cols);
  }
  for (int64_t r = 0; r < s.rows; ++r) idx->row_ptr[r + 1] += idx->row_ptr[r];
  find_shared4(*idx);

  for (int i = 0; i < 4; ++i) idx->stored_sizes[i] = sizes[i];
  idx->stored = std::move(stored);
  idx->bytes = static_cast<int64_t>(sizeof(SparseIndex) + idx->row_ptr.size() * 4 + idx->col16.size() * 2 + idx->col.size() * 4 +
                                    idx->decoded.size() * 4 + idx->shared4.size() + idx->stored.size());
  return idx;
}

CsrView csr_view(const SparseIndex& index, const float* stored_values) {
  CsrView v;
  v.rows = index.rows;
  v.cols = index.cols;
  v.row_ptr = index.row_ptr.data();
  v.col16 = index.col16.empty() ? nullptr : index.col16.data();
  v.col = index.col.empty() ? nullptr : index.col.data();
  v.values = index.quantized ? index.decoded.data() : stored_values;
  v.shared4 = index.shared4.empty() ? nullptr : index.shared4.data();
  return v;
}

void csr_to_dense(const CsrView& w, float* dense) {
  std::fill(dense, dense + w.rows * w.cols, 0.0f);
  for (int64_t o = 0; o < w.rows; ++o)
    for (int64_t k = w.row_ptr[o]; k < w.row_ptr[o + 1]; ++k) dense[o * w.cols + w.column(k)] = w.values[k];
}

std::shared_ptr<const SparseIndex> SparseIndexCache::get(const StoredSparse& s) {
  if (auto hit = cache_.find([&](const SparseIndex& idx) { return same_stored(idx, s); })) return hit;
  auto built = build_sparse_index(s);  // outside the lock: may take a while, may throw
  cache_.add(built, built->bytes);
  return built;
}

}  // namespace patsparse
