// Throughput of one 12-vector tap from L1 three ways (x86.md, issue 14 item 3): 12 split loads
// (4 bytes off a line), 13 aligned loads + 12 valignd by a compile-time shift, 13 aligned loads + 12
// vpermt2ps by a run-time index vector; each vector feeds one FMA. Thread CPU time.
//   g++ -O2 benchmarks/shift_probe.cpp -o /tmp/shift_probe && /tmp/shift_probe
// (GCC 12 warns -Wmaybe-uninitialized inside its own _mm512_alignr_epi32 wrapper at -Wall: harmless.)
#include <immintrin.h>
#include <time.h>
#include <cstdio>
#include <cstdlib>
static double now() { timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
alignas(64) float buf[4096 + 64];
alignas(64) int idx_tab[16];
// V=12 accumulators; per "tap": either 12 split loads, or 13 aligned loads + 12 valignd, or 13 loads + 12 vpermt2ps
template <int MODE>
__attribute__((target("avx512f"), noinline)) float run(long iters, int off) {
  __m512 acc[12];
  for (int i = 0; i < 12; ++i) acc[i] = _mm512_setzero_ps();
  const __m512 w = _mm512_set1_ps(1.0001f);
  const __m512i idx = _mm512_load_si512(idx_tab);
  for (long it = 0; it < iters; ++it) {
    const float* base = buf + ((it * 256) & 2047);
    if constexpr (MODE == 0) {
#pragma GCC unroll 12
      for (int v = 0; v < 12; ++v) acc[v] = _mm512_fmadd_ps(_mm512_loadu_ps(base + off + 16 * v), w, acc[v]);
    } else {
      __m512 a = _mm512_load_ps(base);
#pragma GCC unroll 12
      for (int v = 0; v < 12; ++v) {
        __m512 b = _mm512_load_ps(base + 16 * (v + 1));
        __m512 x;
        if constexpr (MODE == 1) x = _mm512_castsi512_ps(_mm512_alignr_epi32(_mm512_castps_si512(b), _mm512_castps_si512(a), 1));
        else x = _mm512_permutex2var_ps(a, idx, b);
        acc[v] = _mm512_fmadd_ps(x, w, acc[v]);
        a = b;
      }
    }
    __asm__ volatile("" ::: "memory");
  }
  float s = 0; alignas(64) float o[16];
  for (int i = 0; i < 12; ++i) { _mm512_store_ps(o, acc[i]); s += o[0]; }
  return s;
}
int main() {
  for (int i = 0; i < 16; ++i) idx_tab[i] = i + 1;
  for (int i = 0; i < 4096 + 64; ++i) buf[i] = 1e-3f;
  long iters = 20000000;
  for (int rep = 0; rep < 2; ++rep) {
    double t0 = now(); float s0 = run<0>(iters, 1); double t1 = now();
    float s1 = run<1>(iters, 0); double t2 = now();
    float s2 = run<2>(iters, 0); double t3 = now();
    double fl = 2.0 * 16 * 12 * iters;
    printf("split loads %.1f GF/s | aligned+valignd %.1f | aligned+vpermt2ps %.1f  (%g)\n", fl / (t1 - t0) / 1e9, fl / (t2 - t1) / 1e9, fl / (t3 - t2) / 1e9, s0 + s1 + s2);
  }
}
