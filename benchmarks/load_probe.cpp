// Load-bound probe behind the numbers in benchmarks/results/x86.md: 12 independent zmm accumulators,
// one 64-byte input load per FMA (what a group=1 pattern kernel does: the weight is a broadcast
// scalar, every kept tap needs its own input vector). Thread CPU time, so other load on the box
// barely matters. Working set: `span` blocks of 1 KB (4 = L1, 64 = L2, 1024 = L2 edge, 16384 = L3/DRAM);
// `off` floats from a 64-byte boundary (1 = every load splits two cache lines).
//   g++ -O2 benchmarks/load_probe.cpp -o /tmp/load_probe && /tmp/load_probe
#include <immintrin.h>
#include <time.h>

#include <cstdio>
#include <cstdlib>
#include <initializer_list>

static double now() {
  timespec t;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

__attribute__((target("avx512f"), noinline)) float run(const float* buf, int iters, int off, int span) {
  __m512 a[12];
  for (int i = 0; i < 12; i++) a[i] = _mm512_setzero_ps();
  const __m512 w = _mm512_set1_ps(1.0001f);
  for (int it = 0; it < iters; ++it) {
    const float* p = buf + off + (it % span) * 16 * 16;
#pragma GCC unroll 12
    for (int v = 0; v < 12; ++v) a[v] = _mm512_fmadd_ps(_mm512_loadu_ps(p + 16 * v), w, a[v]);
  }
  __m512 s = a[0];
  for (int i = 1; i < 12; i++) s = _mm512_add_ps(s, a[i]);
  return _mm512_reduce_add_ps(s);
}

int main() {
  float* buf = static_cast<float*>(aligned_alloc(64, 64 << 20));
  for (size_t i = 0; i < (16u << 20); i++) buf[i] = 1e-9f;
  const int iters = 5000000;
  for (int span : {4, 64, 1024, 16384})
    for (int off : {0, 1, 8}) {
      const double t0 = now();
      const float r = run(buf, iters, off, span);
      const double s = now() - t0;
      std::printf("working set %6d KB, offset %d floats: %6.1f GFLOP/s (%g)\n", span, off, 2.0 * 12 * 16 * iters / s / 1e9, r);
    }
}
