// Peak multiply-adds per second on one core: fp32 FMA (ymm) against vdpbf16ps (ymm, zmm), twelve
// independent accumulators, registers only. docs/BENCHMARKS.md, "bf16 compute".
//   clang -O2 benchmarks/bf16_peak.c -o /tmp/bf16_peak && /tmp/bf16_peak
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}
__attribute__((target("avx512f,avx512bf16,avx512vl")))
float bf(long n){ __m512 a[12]; for(int i=0;i<12;i++)a[i]=_mm512_setzero_ps();
 __m512bh x=(__m512bh)_mm512_set1_epi16(0x3f80), y=(__m512bh)_mm512_set1_epi16(0x3f00);
 for(long i=0;i<n;i++){ 
#pragma GCC unroll 12
 for(int j=0;j<12;j++) a[j]=_mm512_dpbf16_ps(a[j],x,y); __asm__ volatile("":"+v"(x));}
 float s=0; for(int i=0;i<12;i++) s+=_mm512_reduce_add_ps(a[i]); return s;}
__attribute__((target("avx512f,avx512bf16,avx512vl")))
float bf256(long n){ __m256 a[12]; for(int i=0;i<12;i++)a[i]=_mm256_setzero_ps();
 __m256bh x=(__m256bh)_mm256_set1_epi16(0x3f80), y=(__m256bh)_mm256_set1_epi16(0x3f00);
 for(long i=0;i<n;i++){ 
#pragma GCC unroll 12
 for(int j=0;j<12;j++) a[j]=_mm256_dpbf16_ps(a[j],x,y); __asm__ volatile("":"+v"(x));}
 float s=0; float t[8]; for(int i=0;i<12;i++){_mm256_storeu_ps(t,a[i]); for(int k=0;k<8;k++)s+=t[k];} return s;}
__attribute__((target("avx2,fma")))
float fm(long n){ __m256 a[12]; for(int i=0;i<12;i++)a[i]=_mm256_setzero_ps();
 __m256 x=_mm256_set1_ps(1), y=_mm256_set1_ps(.5f);
 for(long i=0;i<n;i++){
#pragma GCC unroll 12
 for(int j=0;j<12;j++) a[j]=_mm256_fmadd_ps(x,y,a[j]); __asm__ volatile("":"+v"(x));}
 float s=0; float t[8]; for(int i=0;i<12;i++){_mm256_storeu_ps(t,a[i]); for(int k=0;k<8;k++)s+=t[k];} return s;}
int main(){ long n=100000000; double t;
 t=now(); float r=fm(n); double d=now()-t; printf("fma ymm: %.1f GMAC/s (%g)\n", n*12*8/d/1e9, r);
 t=now(); r=bf256(n); d=now()-t; printf("dpbf16 ymm: %.1f GMAC/s (%g)\n", n*12*16/d/1e9, r);
 t=now(); r=bf(n); d=now()-t; printf("dpbf16 zmm: %.1f GMAC/s (%g)\n", n*12*32/d/1e9, r);
}
