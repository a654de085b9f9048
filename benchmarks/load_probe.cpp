#include <initializer_list>
#include <immintrin.h>
#include <chrono>
#include <time.h>
static double now(){timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID,&t); return t.tv_sec+1e-9*t.tv_nsec;}
#include <cstdio>
#include <cstdlib>
__attribute__((target("avx512f"), noinline)) float run(const float* buf, int iters, int off, int span) {
  __m512 a[12]; for (int i=0;i<12;i++) a[i]=_mm512_setzero_ps();
  __m512 w=_mm512_set1_ps(1.0001f);
  for (int it=0; it<iters; ++it) {
    const float* p = buf + off + (it % span) * 16*16;   // walk over `span` blocks
    #pragma GCC unroll 12
    for (int v=0; v<12; ++v) a[v]=_mm512_fmadd_ps(_mm512_loadu_ps(p+16*v), w, a[v]);
  }
  __m512 s=a[0]; for(int i=1;i<12;i++) s=_mm512_add_ps(s,a[i]);
  return _mm512_reduce_add_ps(s);
}
int main(int argc,char**argv){
  float* buf=(float*)aligned_alloc(64, 64<<20); for(size_t i=0;i<(16u<<20);i++) buf[i]=1e-9f;
  int iters=5000000;
  for (int span : {4, 64, 1024, 16384}) for (int off : {0, 1, 8}) {
    double t0=now(); float r=run(buf,iters,off,span); double t1=now();
    double s=t1-t0;
    printf("span %6d blocks(1KB) off %d: %.2f GFMA-lanes... %.1f GF/s (%g)\n", span, off, 0.0, 2.0*12*16*iters/s/1e9, r);
  }
}
