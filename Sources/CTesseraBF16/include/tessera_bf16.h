#ifndef TESSERA_BF16_H
#define TESSERA_BF16_H

#include <stdint.h>

// Convolution forward with bf16 multiplies and fp32 sums (vdpbf16ps, AVX512_BF16), the compute of
// TensorFlow's mixed_bfloat16 policy. Compiled with target attributes, so the package builds for
// any x86-64; callers check tb16_supported() first (the CPU and the OS's AVX-512 state) and keep
// fp32 elsewhere. A product of two bf16 values is exact in fp32, so the result is the fp32
// convolution of the rounded inputs and weights, summed in fp32.

// 1 when this CPU runs the kernels below, 0 otherwise (and on every other architecture).
int tb16_supported(void);

// fp32 → bf16 bits, rounded to nearest even; NaN stays NaN.
uint16_t tb16_round(float v);

// One image's channels into channel pairs (c, c+1) of bf16, zero-padded: dst[(c/2)·hp·wp + (y+top)·wp +
// x + left] holds channel c in its low half and c+1 in its high half. An odd last channel pairs with
// 0, or with `xpair` with itself one column on (its pair at padded column j is (v[j], v[j+1]), v
// past the row 0), so its taps kx, kx+1 take one step. Writes the interior rows `rows` (flat
// channel-pair·h + y indices) and, for xpair, the column before them; the caller zeroes the rest
// once.
void tb16_pack_image(const float *x, int channels, int h, int w, int top, int left, int hp, int wp, int xpair,
                     long rowBegin, long rowEnd, uint32_t *dst);

// Weights (K, C, kh, kw), each output channel's times scale[k] (NULL: 1), into dst[kb][step][16]
// pairs, zero past K and past C: steps (pair, ky, kx) of the channel pairs, then for an odd C the
// last channel's (ky, kx) — or with `xpair` its (ky, kx pair), kx = 2j and 2j+1 (0 past kw).
void tb16_pack_weights(const float *w, const float *scale, int K, int C, int kh, int kw, int xpair, uint32_t *dst);

// Output pixels 0..<count whose window origins in the packed image are pb[0..<count] (in pairs):
// out[k·outPlane + i] = max(Σ_s x[pb[i] + to[s]] · wt[kb][s][k mod 16] + bias[k], floor) for k < K
// (bias NULL: 0). pb comes from a row-major grid of origins `step` apart along a row (the stride in
// pairs): a tile of 12 whose last origin is 11·step past its first lies on one row, which frees the
// kernel's address registers for steps 1 and 2.
void tb16_conv_pixels(const uint32_t *x, const int64_t *pb, long count, long step, const int64_t *to,
                      long steps, const uint32_t *wt, long K, const float *bias, float floor,
                      float *out, long outPlane);

// Backward-weights: dw[k·ldw + t] += Σ_p dy[k, p] · x_t[p] over `rows` output rows, each row's
// pixels in pairs. x holds the input in bf16 split into column phases (tb16_pack_phases); tapOff[t]
// is tap t's element offset from the first row's first pixel there, so pixel pair s of tap t in
// row r is the two adjacent values at x + r·rowStep + tapOff[t] + 2s. d holds the rows' dy as
// [K/16][rows·pairs][16] pairs (tb16_pack_row_pairs).
void tb16_weight_grads(const uint16_t *x, const int64_t *tapOff, long taps, long rows, long rowStep,
                       const uint32_t *d, long pairs, long K, float *dw, long ldw);

// Rows `rows` (flat c·h + y) of one image into bf16 column phases: padded column j of row y of
// channel c goes to dst[(c·hp + y + top)·rowLen + (j mod stride)·phaseLen + j / stride], j = x + left,
// rowLen = stride·phaseLen. The rest (padding) is zeroed once by the caller.
void tb16_pack_phases(const float *x, int h, int w, int top, int left, int hp, int stride, long phaseLen,
                      long rowBegin, long rowEnd, uint16_t *dst);

// `rows` consecutive rows of dy (K planes `plane` apart, `width` pixels a row, from dy) as
// [K/16][rows·pairs][16] bf16 pairs of adjacent pixels, a row's last pair's second pixel 0 when
// width is odd.
void tb16_pack_row_pairs(const float *dy, long K, long plane, long width, long rows, uint32_t *dst);

#endif
