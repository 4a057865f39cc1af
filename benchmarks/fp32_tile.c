// fp32 forward-convolution register tiles on one core, the tap loop alone (no packing, no stores to
// channel planes): the kernels' 6 pixels × 16 channels (ymm, AVX2: 12 accumulators in 16 registers)
// against 12 × 16 under AVX-512VL (24 accumulators in ymm0–31), with 12 row pointers or one row base.
// docs/BENCHMARKS.md, "Open" (session 8).
//   clang -O2 -mllvm -enable-misched=false benchmarks/fp32_tile.c -o /tmp/fp32_tile
//   /tmp/fp32_tile C H K k s      e.g. 3 1024 16 7 2 (the stem), 32 128 32 3 1, 128 32 128 3 1
// (without the -mllvm flag clang hoists all twelve broadcasts and spills the accumulators.) The
// one-row variant reads 12 consecutive output pixels of a row even where the row ends: a measure of
// the loop's speed only, as is the whole program.
#include <immintrin.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <string.h>
// conv forward over one padded image: C x Hp x Wp, K=16*KB outputs, k x k stride s.
static double now(){struct timespec t;clock_gettime(CLOCK_MONOTONIC,&t);return t.tv_sec+t.tv_nsec*1e-9;}

#define T6 __attribute__((target("avx2,fma")))
#define T12 __attribute__((target("avx512f,avx512vl,fma")))

T6 static void tile6(long T,const long*to,const float*const*xs,const float*wk,float*out){
  __m256 c[12]; for(int i=0;i<12;i++)c[i]=_mm256_setzero_ps();
  const float*x0=xs[0],*x1=xs[1],*x2=xs[2],*x3=xs[3],*x4=xs[4],*x5=xs[5];
  for(long t=0;t<T;t++){long o=to[t];__m256 w0=_mm256_loadu_ps(wk),w1=_mm256_loadu_ps(wk+8);
    __m256 v;
    v=_mm256_broadcast_ss(x0+o);c[0]=_mm256_fmadd_ps(v,w0,c[0]);c[1]=_mm256_fmadd_ps(v,w1,c[1]);
    v=_mm256_broadcast_ss(x1+o);c[2]=_mm256_fmadd_ps(v,w0,c[2]);c[3]=_mm256_fmadd_ps(v,w1,c[3]);
    v=_mm256_broadcast_ss(x2+o);c[4]=_mm256_fmadd_ps(v,w0,c[4]);c[5]=_mm256_fmadd_ps(v,w1,c[5]);
    v=_mm256_broadcast_ss(x3+o);c[6]=_mm256_fmadd_ps(v,w0,c[6]);c[7]=_mm256_fmadd_ps(v,w1,c[7]);
    v=_mm256_broadcast_ss(x4+o);c[8]=_mm256_fmadd_ps(v,w0,c[8]);c[9]=_mm256_fmadd_ps(v,w1,c[9]);
    v=_mm256_broadcast_ss(x5+o);c[10]=_mm256_fmadd_ps(v,w0,c[10]);c[11]=_mm256_fmadd_ps(v,w1,c[11]);
    wk+=16;}
  for(int i=0;i<12;i++)_mm256_storeu_ps(out+8*i,c[i]);
}
T12 static void tileN(long T,const long*to,const float*const*xs,const float*wk,float*out){
#define NP 12
  __m256 c[2*NP]; for(int i=0;i<2*NP;i++)c[i]=_mm256_setzero_ps();
  const float*x[NP]; for(int i=0;i<NP;i++)x[i]=xs[i];
  for(long t=0;t<T;t++){long o=to[t];__m256 w0=_mm256_loadu_ps(wk),w1=_mm256_loadu_ps(wk+8);
#pragma clang loop unroll(full)
    for(int i=0;i<NP;i++){__m256 v=_mm256_broadcast_ss(x[i]+o);c[2*i]=_mm256_fmadd_ps(v,w0,c[2*i]);c[2*i+1]=_mm256_fmadd_ps(v,w1,c[2*i+1]);}
    wk+=16;}
  for(int i=0;i<2*NP;i++)_mm256_storeu_ps(out+8*i,c[i]);
}
T12 static void tileRow(long T,const long*to,const float*x0,long S,const float*wk,float*out){
  __m256 c[24]; for(int i=0;i<24;i++)c[i]=_mm256_setzero_ps();
  for(long t=0;t<T;t++){const float*xo=x0+to[t];__m256 w0=_mm256_loadu_ps(wk),w1=_mm256_loadu_ps(wk+8);
#pragma clang loop unroll(full)
    for(int i=0;i<12;i++){__m256 v=_mm256_broadcast_ss(xo+i*S);c[2*i]=_mm256_fmadd_ps(v,w0,c[2*i]);c[2*i+1]=_mm256_fmadd_ps(v,w1,c[2*i+1]);}
    wk+=16;}
  for(int i=0;i<24;i++)_mm256_storeu_ps(out+8*i,c[i]);
}
int main(int argc,char**argv){
  int C=atoi(argv[1]),H=atoi(argv[2]),K=atoi(argv[3]),k=atoi(argv[4]),s=atoi(argv[5]);
  int pad=k/2,Hp=H+2*pad,Wp=Hp,Ho=(H+2*pad-k)/s+1,P=Ho*Ho;long T=(long)C*k*k;
  float*x=aligned_alloc(64,sizeof(float)*C*Hp*Wp);for(long i=0;i<(long)C*Hp*Wp;i++)x[i]=(rand()%100)/100.f;
  float*w=aligned_alloc(64,sizeof(float)*T*K);for(long i=0;i<T*K;i++)w[i]=(rand()%100)/100.f;
  long*to=malloc(sizeof(long)*T);long n=0;for(int c=0;c<C;c++)for(int ky=0;ky<k;ky++)for(int kx=0;kx<k;kx++)to[n++]=(long)c*Hp*Wp+ky*Wp+kx;
  long*pb=malloc(sizeof(long)*(P+32));for(int p=0;p<P;p++){pb[p]=(long)(p/Ho)*s*Wp+(p%Ho)*s;}for(int p=P;p<P+32;p++)pb[p]=pb[P-1];
  float out[16*32];double fl=2.0*P*K*T;
  for(int round=0;round<3;round++){
  for(int var=0;var<3;var++){
    double best=1e9;
    for(int rep=0;rep<5;rep++){double t0=now();
      for(int kb=0;kb<K/16;kb++){const float*wk=w+kb*T*16;
        if(var==0){for(int p=0;p<P;p+=6){const float*xs[6];for(int i=0;i<6;i++)xs[i]=x+pb[p+i];tile6(T,to,xs,wk,out);}}
        else if(var==2){ if(s==1)for(int p=0;p<P;p+=12)tileRow(T,to,x+pb[p],1,wk,out); else for(int p=0;p<P;p+=12)tileRow(T,to,x+pb[p],2,wk,out);}
        else {for(int p=0;p<P;p+=NP){const float*xs[NP];for(int i=0;i<NP;i++)xs[i]=x+pb[p+i];tileN(T,to,xs,wk,out);}}
      }
      double dt=now()-t0;if(dt<best)best=dt;}
    printf("%s %.1f GFLOP/s\n",var==2?"12x16 one row, avx512vl":var?"12x16 avx512vl":"6x16 avx2",fl/best*1e-9);
  }}
}
