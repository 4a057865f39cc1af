#include "tessera_bf16.h"

#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#define TB16_TARGET __attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw,avx512dq")))
TB16_TARGET static long cvt_pairs(const float *lo, const float *hi, long n, uint32_t *d);
TB16_TARGET static long cvt_row(const float *src, long n, uint16_t *d);
TB16_TARGET static long cvt_deinterleave(const float *src, long n, uint16_t *even, uint16_t *odd);
TB16_TARGET static long cvt_scatter_pairs(const float *src, long pairs, uint32_t *d);
#else
static long cvt_scatter_pairs(const float *src, long pairs, uint32_t *d) { (void)src; (void)pairs; (void)d; return 0; }
static long cvt_pairs(const float *lo, const float *hi, long n, uint32_t *d) { (void)lo; (void)hi; (void)n; (void)d; return 0; }
static long cvt_row(const float *src, long n, uint16_t *d) { (void)src; (void)n; (void)d; return 0; }
static long cvt_deinterleave(const float *src, long n, uint16_t *even, uint16_t *odd) {
  (void)src; (void)n; (void)even; (void)odd; return 0;
}
#endif

// As vcvtneps2bf16 (the vector loops use it): round to nearest even, subnormals to ±0, NaN quiet.
uint16_t tb16_round(float v) {
  uint32_t bits;
  memcpy(&bits, &v, 4);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((bits >> 16) | 0x40);  // quiet NaN
  if ((bits & 0x7f800000u) == 0) return (uint16_t)((bits >> 16) & 0x8000);        // ±0
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return (uint16_t)(bits >> 16);
}

void tb16_pack_image(const float *x, int channels, int h, int w, int top, int left, int hp, int wp, int xpair,
                     long rowBegin, long rowEnd, uint32_t *dst) {
  for (long row = rowBegin; row < rowEnd; row++) {
    long pair = row / h, y = row % h;
    long c0 = 2 * pair;
    const float *lo = x + (c0 * h + y) * w;
    const float *hi = c0 + 1 < channels ? lo + (long)h * w : NULL;
    uint32_t *d = dst + (pair * hp + y + top) * (long)wp + left;
    if (hi) {
      long i = cvt_pairs(lo, hi, w, d);
      for (; i < w; i++) d[i] = (uint32_t)tb16_round(lo[i]) | (uint32_t)tb16_round(hi[i]) << 16;
    } else if (xpair) {
      // The odd last channel paired with itself one column on: (v[j], v[j+1]) of its padded row,
      // v past the row's end 0; the column before the image holds (0, v[left]).
      long i = cvt_pairs(lo, lo + 1, w - 1, d);
      for (; i < w - 1; i++) d[i] = (uint32_t)tb16_round(lo[i]) | (uint32_t)tb16_round(lo[i + 1]) << 16;
      d[w - 1] = tb16_round(lo[w - 1]);
      if (left > 0) d[-1] = (uint32_t)tb16_round(lo[0]) << 16;
    } else {
      long i = cvt_pairs(lo, NULL, w, d);
      for (; i < w; i++) d[i] = tb16_round(lo[i]);
    }
  }
}

void tb16_pack_weights(const float *w, const float *scale, int K, int C, int kh, int kw, int xpair, uint32_t *dst) {
  long taps = (long)kh * kw, full = C / 2, kwp = (kw + 1) / 2;
  long steps = full * taps + (C & 1 ? (xpair ? kh * kwp : taps) : 0), KB = (K + 15) / 16;
  memset(dst, 0, sizeof(uint32_t) * KB * steps * 16);
  for (int k = 0; k < K; k++) {
    float sk = scale ? scale[k] : 1.0f;
    uint32_t *d = dst + (k / 16) * steps * 16 + k % 16;
    const float *wk = w + (long)k * C * taps;
    for (long c = 0; c < 2 * full; c++) {
      for (long t = 0; t < taps; t++) {
        uint32_t v = tb16_round(wk[c * taps + t] * sk);
        d[((c / 2) * taps + t) * 16] |= (c & 1) ? v << 16 : v;
      }
    }
    if (!(C & 1)) continue;
    const float *wc = wk + (C - 1) * taps;
    uint32_t *dl = d + full * taps * 16;
    for (long ky = 0; ky < kh; ky++) {
      for (long kx = 0; kx < kw; kx++) {
        uint32_t v = tb16_round(wc[ky * kw + kx] * sk);
        if (xpair) dl[(ky * kwp + kx / 2) * 16] |= (kx & 1) ? v << 16 : v;  // taps kx, kx+1 in one pair
        else dl[(ky * kw + kx) * 16] = v;
      }
    }
  }
}

void tb16_pack_phases(const float *x, int h, int w, int top, int left, int hp, int stride, long phaseLen,
                      long rowBegin, long rowEnd, uint16_t *dst) {
  long rowLen = stride * phaseLen;
  for (long row = rowBegin; row < rowEnd; row++) {
    long c = row / h, y = row % h;
    const float *src = x + row * (long)w;
    uint16_t *d = dst + (c * hp + y + top) * rowLen;
    if (stride == 1) {
      for (long i = cvt_row(src, w, d + left); i < w; i++) d[left + i] = tb16_round(src[i]);
      continue;
    }
    if (stride == 2) {
      // Source values 2k and 2k+1 land in the two phases; which is which follows left's parity.
      uint16_t *even = d + (left & 1) * phaseLen + left / 2;
      uint16_t *odd = d + (1 - (left & 1)) * phaseLen + (left + 1) / 2;
      long i = cvt_deinterleave(src, w, even, odd);
      for (; i < w; i++) d[((left + i) & 1) * phaseLen + (left + i) / 2] = tb16_round(src[i]);
      continue;
    }
    for (int ph = 0; ph < stride; ph++) {
      // Padded columns j = left + i ≡ ph (mod stride): the first such i, then every stride-th.
      long first = (ph - left % stride + stride) % stride;
      uint16_t *dp = d + ph * phaseLen;
      for (long i = first; i < w; i += stride) dp[(left + i) / stride] = tb16_round(src[i]);
    }
  }
}

void tb16_pack_row_pairs(const float *dy, long K, long plane, long width, long rows, uint32_t *dst) {
  long pairs = (width + 1) / 2, KB = (K + 15) / 16, n = rows * pairs;
  for (long kb = 0; kb < KB; kb++) {
    for (long j = 0; j < 16; j++) {
      long k = kb * 16 + j;
      uint32_t *dk = dst + kb * n * 16 + j;
      if (k >= K) {
        for (long s = 0; s < n; s++) dk[s * 16] = 0;
        continue;
      }
      for (long r = 0; r < rows; r++) {
        const float *row = dy + k * plane + r * width;
        uint32_t *dr = dk + r * pairs * 16;
        long s = cvt_scatter_pairs(row, width / 2, dr);
        for (; s < width / 2; s++) dr[s * 16] = (uint32_t)tb16_round(row[2 * s]) | (uint32_t)tb16_round(row[2 * s + 1]) << 16;
        if (width & 1) dr[(pairs - 1) * 16] = tb16_round(row[width - 1]);
      }
    }
  }
}

#if defined(__x86_64__)

// 16 values at a time: lo (and hi) into bf16 pairs; returns how many were done.
TB16_TARGET static long cvt_pairs(const float *lo, const float *hi, long n, uint32_t *d) {
  long i = 0;
  for (; i + 16 <= n; i += 16) {
    __m512i v = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(lo + i)));
    if (hi) {
      __m512i h = _mm512_cvtepu16_epi32((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(hi + i)));
      v = _mm512_or_si512(v, _mm512_slli_epi32(h, 16));
    }
    _mm512_storeu_si512(d + i, v);
  }
  return i;
}

TB16_TARGET static long cvt_row(const float *src, long n, uint16_t *d) {
  long i = 0;
  for (; i + 16 <= n; i += 16) _mm256_storeu_si256((__m256i *)(d + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
  return i;
}

// even[k] = src[2k], odd[k] = src[2k+1] in bf16, 32 values at a time.
TB16_TARGET static long cvt_deinterleave(const float *src, long n, uint16_t *even, uint16_t *odd) {
  static const uint16_t order[32] = {0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30,
                                     1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31};
  const __m512i idx = _mm512_loadu_si512(order);
  long i = 0;
  for (; i + 32 <= n; i += 32) {
    __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + i + 16), _mm512_loadu_ps(src + i));
    v = _mm512_permutexvar_epi16(idx, v);
    _mm256_storeu_si256((__m256i *)(even + i / 2), _mm512_castsi512_si256(v));
    _mm256_storeu_si256((__m256i *)(odd + i / 2), _mm512_extracti64x4_epi64(v, 1));
  }
  return i;
}

// d[16·s] = (src[2s], src[2s+1]) in bf16, 16 pairs at a time (one scatter of a converted vector).
TB16_TARGET static long cvt_scatter_pairs(const float *src, long pairs, uint32_t *d) {
  const __m512i idx = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                         _mm512_set1_epi32(16));
  long s = 0;
  for (; s + 16 <= pairs; s += 16) {
    __m512i v = (__m512i)_mm512_cvtne2ps_pbh(_mm512_loadu_ps(src + 2 * s + 16), _mm512_loadu_ps(src + 2 * s));
    _mm512_i32scatter_epi32(d + 16 * s, idx, v, 4);
  }
  return s;
}

int tb16_supported(void) {
  __builtin_cpu_init();
  // __builtin_cpu_supports checks the OS's saved AVX-512 state (XCR0) too.
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16") ? 1 : 0;
}

enum { TILE = 12 };

// 12 pixels × 16 channels: per step one weight vector and twelve broadcast pairs, twelve vdpbf16ps.
// `step` > 0: pixel i's origin is pb[0] + i·step (a constant after inlining); else pb[min(i, n−1)].
TB16_TARGET static inline __attribute__((always_inline)) void
tile(const uint32_t *x, const int64_t *pb, int n, long step, const int64_t *to, long steps,
     const uint32_t *wk, __m512 bias, __m512 floor, float *s) {
  __m512 c[TILE];
  for (int i = 0; i < TILE; i++) c[i] = _mm512_setzero_ps();
  if (step > 0) {
    const uint32_t *xb = x + pb[0];
    for (long t = 0; t < steps; t++) {
      const uint32_t *xo = xb + to[t];
      __m512bh wv = (__m512bh)_mm512_loadu_si512(wk + 16 * t);
#pragma clang loop unroll(full)
      for (int i = 0; i < TILE; i++)
        c[i] = _mm512_dpbf16_ps(c[i], wv, (__m512bh)_mm512_set1_epi32((int)xo[i * step]));
    }
  } else {
    const uint32_t *xp[TILE];
    for (int i = 0; i < TILE; i++) xp[i] = x + pb[i < n ? i : n - 1];
    for (long t = 0; t < steps; t++) {
      long o = to[t];
      __m512bh wv = (__m512bh)_mm512_loadu_si512(wk + 16 * t);
#pragma clang loop unroll(full)
      for (int i = 0; i < TILE; i++)
        c[i] = _mm512_dpbf16_ps(c[i], wv, (__m512bh)_mm512_set1_epi32((int)xp[i][o]));
    }
  }
  // max(c + bias, floor) as Swift.max(v, floor): NaN kept, the floor at equality (+0 for −0).
  for (int i = 0; i < TILE; i++) {
    __m512 v = _mm512_add_ps(c[i], bias);
    v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, floor, _CMP_LE_OQ), floor);
    _mm512_storeu_ps(s + 16 * i, v);
  }
}

TB16_TARGET static void tile_step1(const uint32_t *x, const int64_t *pb, const int64_t *to, long steps,
                                   const uint32_t *wk, __m512 b, __m512 f, float *s) {
  tile(x, pb, TILE, 1, to, steps, wk, b, f, s);
}
TB16_TARGET static void tile_step2(const uint32_t *x, const int64_t *pb, const int64_t *to, long steps,
                                   const uint32_t *wk, __m512 b, __m512 f, float *s) {
  tile(x, pb, TILE, 2, to, steps, wk, b, f, s);
}
TB16_TARGET static void tile_any(const uint32_t *x, const int64_t *pb, int n, const int64_t *to, long steps,
                                 const uint32_t *wk, __m512 b, __m512 f, float *s) {
  tile(x, pb, n, 0, to, steps, wk, b, f, s);
}

TB16_TARGET void tb16_conv_pixels(const uint32_t *x, const int64_t *pb, long count, long step, const int64_t *to,
                                  long steps, const uint32_t *wt, long K, const float *bias, float floor,
                                  float *out, long outPlane) {
  float s[TILE * 16] __attribute__((aligned(64)));
  long KB = (K + 15) / 16;
  __m512 f = _mm512_set1_ps(floor);
  for (long kb = 0; kb < KB; kb++) {
    long kValid = K - kb * 16 < 16 ? K - kb * 16 : 16;
    float bb[16] = {0};
    if (bias) for (long j = 0; j < kValid; j++) bb[j] = bias[kb * 16 + j];
    __m512 b = _mm512_loadu_ps(bb);
    const uint32_t *wk = wt + kb * steps * 16;
    float *ok = out + kb * 16 * outPlane;
    for (long p0 = 0; p0 < count; p0 += TILE) {
      int n = count - p0 < TILE ? (int)(count - p0) : TILE;
      // One row (or rows that join without a gap): the origins are pb[p0] + i·step.
      int row = n == TILE && pb[p0 + TILE - 1] - pb[p0] == (TILE - 1) * step;
      if (row && step == 1) tile_step1(x, pb + p0, to, steps, wk, b, f, s);
      else if (row && step == 2) tile_step2(x, pb + p0, to, steps, wk, b, f, s);
      else tile_any(x, pb + p0, n, to, steps, wk, b, f, s);
      // Pixel-major scratch into channel planes; plain moves (vectorized, this loop became gathers).
      for (long j = 0; j < kValid; j++) {
        float *oj = ok + j * outPlane + p0;
#pragma clang loop vectorize(disable)
        for (int i = 0; i < n; i++) oj[i] = s[16 * i + j];
      }
    }
  }
}

// 12 taps × 16 channels of dw, summed over `rows` output rows of pixel pairs and added to dw.
TB16_TARGET static void grad_tile(const uint16_t *x, const int64_t *tapOff, int n, long rows, long rowStep,
                                  const uint32_t *dk, long pairs, long kValid, float *dw, long ldw) {
  __m512 c[TILE];
  for (int i = 0; i < TILE; i++) c[i] = _mm512_setzero_ps();
  for (long r = 0; r < rows; r++) {
    const uint16_t *xp[TILE];
    for (int i = 0; i < TILE; i++) xp[i] = x + r * rowStep + tapOff[i < n ? i : n - 1];
    const uint32_t *dr = dk + r * pairs * 16;
    for (long s = 0; s < pairs; s++) {
      __m512bh dv = (__m512bh)_mm512_loadu_si512(dr + 16 * s);
#pragma clang loop unroll(full)
      for (int i = 0; i < TILE; i++) {
        uint32_t v;
        memcpy(&v, xp[i] + 2 * s, 4);
        c[i] = _mm512_dpbf16_ps(c[i], dv, (__m512bh)_mm512_set1_epi32((int)v));
      }
    }
  }
  float t[TILE * 16] __attribute__((aligned(64)));
  for (int i = 0; i < TILE; i++) _mm512_store_ps(t + 16 * i, c[i]);
  for (long j = 0; j < kValid; j++) {
#pragma clang loop vectorize(disable)
    for (int i = 0; i < n; i++) dw[j * ldw + i] += t[16 * i + j];
  }
}

TB16_TARGET void tb16_weight_grads(const uint16_t *x, const int64_t *tapOff, long taps, long rows, long rowStep,
                                   const uint32_t *d, long pairs, long K, float *dw, long ldw) {
  long KB = (K + 15) / 16;
  for (long kb = 0; kb < KB; kb++) {
    long kValid = K - kb * 16 < 16 ? K - kb * 16 : 16;
    for (long t0 = 0; t0 < taps; t0 += TILE) {
      int n = taps - t0 < TILE ? (int)(taps - t0) : TILE;
      grad_tile(x, tapOff + t0, n, rows, rowStep, d + kb * rows * pairs * 16, pairs, kValid, dw + kb * 16 * ldw + t0, ldw);
    }
  }
}

#else

int tb16_supported(void) { return 0; }

void tb16_weight_grads(const uint16_t *x, const int64_t *tapOff, long taps, long rows, long rowStep,
                       const uint32_t *d, long pairs, long K, float *dw, long ldw) {
  (void)x; (void)tapOff; (void)taps; (void)rows; (void)rowStep; (void)d; (void)pairs; (void)K; (void)dw; (void)ldw;
}

void tb16_conv_pixels(const uint32_t *x, const int64_t *pb, long count, long step, const int64_t *to,
                      long steps, const uint32_t *wt, long K, const float *bias, float floor,
                      float *out, long outPlane) {
  (void)x; (void)pb; (void)count; (void)step; (void)to; (void)steps; (void)wt; (void)K; (void)bias;
  (void)floor; (void)out; (void)outPlane;
}

#endif
