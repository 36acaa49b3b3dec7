/* Decode attention for CPU: softmax(q k^T * scaling + mask) v for a few queries per head, float32 and bfloat16.
 *
 * A decode step asks each head for one query (up to 16 in assisted decoding) against its cached keys. torch's CPU
 * flash kernel, what `sdpa` runs with an additive mask, spends 136 us a layer on that at the 1.31B shape in bfloat16
 * (32 heads, 100 keys, AMD EPYC): a tenth of the step outside the weight products. This loop takes one (batch, head,
 * query) row per task: scores as float32 dot products, keys whose mask is at most -1e30 skipped (their softmax weight
 * is exactly 0 next to any unmasked key), a vectorised exp, and the weighted sum of the values in float32, rounded
 * once to bfloat16 and written straight into the (batch, query, head, head_dim) layout the output projection reads.
 *
 * Built into the same library as `small_batch_linear.c` by `build.py`; called through ctypes by `attention.py`, which
 * checks shapes, dtypes, strides and devices before any pointer reaches this file.
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <omp.h>

#define MASKED_AT (-1e30f)  /* a mask value at or below this removes the key */
#define MAX_HEAD_DIM 512

/* Sixteen (or `lanes`) values from p as float32; bfloat16 is the upper half of a float32. */
static inline __m512 load16(const void* p, int bf16, __mmask16 lanes) {
  if (!bf16) return _mm512_maskz_loadu_ps(lanes, p);
  const __m512i widened = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(widened, 16));
}

static inline float load1(const void* p, long i, int bf16) {
  if (!bf16) return ((const float*)p)[i];
  uint32_t u = (uint32_t)((const uint16_t*)p)[i] << 16; float f; memcpy(&f, &u, 4); return f;
}

static inline uint16_t to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16);
}

/* exp(x) for x <= 0 (Cephes' expf polynomial, within 2 ulp); lanes below -103 give exactly 0. */
static inline __m512 exp_nonpositive(__m512 x) {
  const __mmask16 vanishing = _mm512_cmp_ps_mask(x, _mm512_set1_ps(-103.f), _CMP_LT_OQ);
  x = _mm512_max_ps(x, _mm512_set1_ps(-103.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.f)));
  return _mm512_maskz_mov_ps(~vanishing, _mm512_scalef_ps(p, n));
}

/* One query row: out[0..D) = sum_j softmax_j v_j. `scores` holds S floats of scratch. */
static void attend_row(const void* q, const char* k, long k_step, const char* v, long v_step, const char* mask,
                       long mask_step, float* out, long S, long D, float scaling, int bf16, float* scores) {
  const long size = bf16 ? 2 : 4, chunks = (D + 15) / 16;
  __m512 query[MAX_HEAD_DIM / 16];
  for (long c = 0; c < chunks; c++) {
    const long left = D - 16 * c;
    const __mmask16 lanes = left >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << left) - 1u);
    query[c] = load16((const char*)q + 16 * c * size, bf16, lanes);
  }
  const __mmask16 tail = D % 16 ? (__mmask16)((1u << (D % 16)) - 1u) : (__mmask16)0xffff;
  float highest = -INFINITY;
  long kept = 0;
  for (long j = 0; j < S; j++) {
    const float bias = load1(mask, j * mask_step, bf16);
    if (bias <= MASKED_AT) { scores[j] = -INFINITY; continue; }
    const char* key = k + j * k_step;
    __m512 dot = _mm512_setzero_ps();
    for (long c = 0; c < chunks; c++)
      dot = _mm512_fmadd_ps(query[c], load16(key + 16 * c * size, bf16, c == chunks - 1 ? tail : 0xffff), dot);
    const float score = _mm512_reduce_add_ps(dot) * scaling + bias;
    scores[j] = score;
    highest = score > highest ? score : highest;
    kept++;
  }
  if (kept == 0) {  /* every key masked: equal weights, as softmax over equal (dtype-min) scores gives */
    for (long j = 0; j < S; j++) scores[j] = 1.f;
  } else {
    const __m512 top = _mm512_set1_ps(highest);
    long j = 0;
    for (; j + 16 <= S; j += 16)
      _mm512_storeu_ps(scores + j, exp_nonpositive(_mm512_sub_ps(_mm512_loadu_ps(scores + j), top)));
    if (j < S) {
      const __mmask16 rest = (__mmask16)((1u << (S - j)) - 1u);
      _mm512_mask_storeu_ps(scores + j, rest, exp_nonpositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(rest, scores + j), top)));
    }
  }
  float total = 0.f;
  for (long j = 0; j < S; j++) total += scores[j];
  __m512 acc[MAX_HEAD_DIM / 16];
  for (long c = 0; c < chunks; c++) acc[c] = _mm512_setzero_ps();
  for (long j = 0; j < S; j++) {
    if (scores[j] == 0.f) continue;
    const __m512 weight = _mm512_set1_ps(scores[j]);
    const char* value = v + j * v_step;
    for (long c = 0; c < chunks; c++)
      acc[c] = _mm512_fmadd_ps(weight, load16(value + 16 * c * size, bf16, c == chunks - 1 ? tail : 0xffff), acc[c]);
  }
  const __m512 inverse = _mm512_set1_ps(1.f / total);
  for (long c = 0; c < chunks; c++)
    _mm512_mask_storeu_ps(out + 16 * c, c == chunks - 1 ? tail : 0xffff, _mm512_mul_ps(acc[c], inverse));
}

/* q: (B, H, T, D), k and v: (B, H, S, D), mask: (B, H, T, S) additive; `strides` holds the four element strides of
 * each, in that order (0 broadcasts; q, k and v have a contiguous last dimension). out: (B, T, H, D) contiguous.
 * `bf16` selects bfloat16 (else float32) for every tensor. Returns 0, 1 for unsupported sizes, 2 if out of memory. */
int falcon_hf_decode_attention(int bf16, const void* q, const void* k, const void* v, const void* mask,
                               const long* strides, void* out, long B, long H, long T, long S, long D, float scaling,
                               int threads) {
  const long *q_strides = strides, *k_strides = strides + 4, *v_strides = strides + 8, *mask_strides = strides + 12;
  if (B < 1 || H < 1 || T < 1 || S < 1 || D < 1 || D > MAX_HEAD_DIM) return 1;
  const long size = bf16 ? 2 : 4, rows = B * H * T;
  int failed = 0;
  #pragma omp parallel num_threads(threads)
  {
    float* scores = malloc((size_t)S * sizeof(float));
    float row[MAX_HEAD_DIM];
    #pragma omp for schedule(static)
    for (long index = 0; index < rows; index++) {
      if (!scores) {
        #pragma omp atomic write
        failed = 1;
        continue;
      }
      const long b = index / (H * T), h = index / T % H, t = index % T;
      const char* qp = (const char*)q + (b * q_strides[0] + h * q_strides[1] + t * q_strides[2]) * size;
      const char* kp = (const char*)k + (b * k_strides[0] + h * k_strides[1]) * size;
      const char* vp = (const char*)v + (b * v_strides[0] + h * v_strides[1]) * size;
      const char* mp = (const char*)mask + (b * mask_strides[0] + h * mask_strides[1] + t * mask_strides[2]) * size;
      attend_row(qp, kp, k_strides[2] * size, vp, v_strides[2] * size, mp, mask_strides[3], row, S, D, scaling, bf16,
                 scores);
      const long at = ((b * T + t) * H + h) * D;
      if (bf16)
        for (long d = 0; d < D; d++) ((uint16_t*)out)[at + d] = to_bf16(row[d]);
      else
        memcpy((float*)out + at, row, (size_t)D * sizeof(float));
    }
    free(scores);
  }
  return failed ? 2 : 0;
}
