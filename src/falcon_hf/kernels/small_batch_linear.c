/* Small-batch linear layers for CPU decoding: y = x W^T + b for 1 to 8 rows of x (16 on AMX), float32 and bfloat16.
 *
 * A decode step multiplies a few activation rows by every weight matrix once, so it is bound by how fast the weights
 * stream from memory. torch's general matrix products reach 35-60% of this machine's bandwidth at 1-8 rows
 * (bfloat16 at 1 row, float32 at 8 rows); these loops read each weight row once for all rows of x, keep 16
 * accumulators in registers, prefetch the next row block (short rows) and split the output rows between torch's
 * OpenMP threads.
 *
 * float32: AVX-512F fused multiply-adds. bfloat16: AMX tile products for 2-16 rows where the CPU has them, else (and
 * for one row, which streams faster row by row) AVX512-BF16 pair dot products; both accumulate in
 * float32, add the bias in float32 and round once to bfloat16 (what oneDNN's bfloat16 linear does). Only the
 * summation order differs from torch's kernels.
 *
 * Built and loaded by `build.py` (plain C, no torch headers); called through ctypes by `linear.py`, which checks
 * shapes, dtypes, strides and devices before any pointer reaches this file.
 */
#include <immintrin.h>
#include <stdint.h>
#include <string.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <omp.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

#define PF(p) _mm_prefetch((const char*)(p), _MM_HINT_T0)
/* Rows shorter than this get the next row block prefetched by hand: the hardware prefetcher starts a new stream for
 * each row and ramps up too late on short ones; on longer rows it keeps up alone and the extra prefetches only take
 * load slots (interleaved microbenchmarks over the small and 1.31B shapes: 2-10% either way). */
#define PREFETCH_MAX_ROW_BYTES 8192

static inline float bf16_to_f32(uint16_t h) { uint32_t u = (uint32_t)h << 16; float f; memcpy(&f, &u, 4); return f; }
static inline uint16_t f32_to_bf16(float f) {
  uint32_t u; memcpy(&u, &f, 4);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u); return (uint16_t)(u >> 16);
}

/* Rows o0..o1 of the output for MM rows of x (RR weight rows at a time).
 * float32: y[m, o] = b[o] + sum_i x[m, i] w[o, i] for rows o0..o1 */
#define DEF_F32(MM, RR) \
static void f32_m##MM(const float* x, long ldx, const float* w, const float* b, float* y, long ldy, long o0, long o1, long I) { \
  const __mmask16 tail = (__mmask16)((1u << (I % 16)) - 1u); const long Iv = I - I % 16; \
  const int prefetch = I * (long)sizeof(*w) < PREFETCH_MAX_ROW_BYTES; \
  for (long o = o0; o < o1; o += RR) { \
    const long rr = o1 - o < RR ? o1 - o : RR; \
    __m512 acc[MM][RR]; \
    for (int m = 0; m < MM; m++) for (int r = 0; r < RR; r++) acc[m][r] = _mm512_setzero_ps(); \
    if (rr == RR) { \
      for (long i = 0; i < Iv; i += 16) { __m512 wv[RR]; \
        for (int r = 0; r < RR; r++) { wv[r] = _mm512_loadu_ps(w + (o + r) * I + i); if (prefetch) PF(w + (o + r + RR) * I + i); } \
        for (int m = 0; m < MM; m++) { const __m512 xv = _mm512_loadu_ps(x + m * ldx + i); \
          for (int r = 0; r < RR; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]); } } \
      if (tail) { __m512 wv[RR]; \
        for (int r = 0; r < RR; r++) wv[r] = _mm512_maskz_loadu_ps(tail, w + (o + r) * I + Iv); \
        for (int m = 0; m < MM; m++) { const __m512 xv = _mm512_maskz_loadu_ps(tail, x + m * ldx + Iv); \
          for (int r = 0; r < RR; r++) acc[m][r] = _mm512_fmadd_ps(xv, wv[r], acc[m][r]); } } \
    } else { \
      for (int r = 0; r < rr; r++) { \
        for (long i = 0; i < Iv; i += 16) { const __m512 wv = _mm512_loadu_ps(w + (o + r) * I + i); \
          for (int m = 0; m < MM; m++) acc[m][r] = _mm512_fmadd_ps(_mm512_loadu_ps(x + m * ldx + i), wv, acc[m][r]); } \
        if (tail) { const __m512 wv = _mm512_maskz_loadu_ps(tail, w + (o + r) * I + Iv); \
          for (int m = 0; m < MM; m++) acc[m][r] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(tail, x + m * ldx + Iv), wv, acc[m][r]); } } \
    } \
    for (int m = 0; m < MM; m++) for (int r = 0; r < rr; r++) \
      y[m * ldy + o + r] = _mm512_reduce_add_ps(acc[m][r]) + (b ? b[o + r] : 0.f); \
  } \
}

/* bfloat16 (AVX512-BF16 dot products, float32 accumulation, one rounding to bfloat16) */
#define DEF_BF16(MM, RR) \
static void bf16_m##MM(const uint16_t* x, long ldx, const uint16_t* w, const uint16_t* b, uint16_t* y, long ldy, long o0, long o1, long I) { \
  const __mmask32 tail = (__mmask32)((1ull << (I % 32)) - 1ull); const long Iv = I - I % 32; \
  const int prefetch = I * (long)sizeof(*w) < PREFETCH_MAX_ROW_BYTES; \
  for (long o = o0; o < o1; o += RR) { \
    const long rr = o1 - o < RR ? o1 - o : RR; \
    __m512 acc[MM][RR]; \
    for (int m = 0; m < MM; m++) for (int r = 0; r < RR; r++) acc[m][r] = _mm512_setzero_ps(); \
    if (rr == RR) { \
      for (long i = 0; i < Iv; i += 32) { __m512bh wv[RR]; \
        for (int r = 0; r < RR; r++) { wv[r] = (__m512bh)_mm512_loadu_si512(w + (o + r) * I + i); if (prefetch) PF(w + (o + r + RR) * I + i); } \
        for (int m = 0; m < MM; m++) { const __m512bh xv = (__m512bh)_mm512_loadu_si512(x + m * ldx + i); \
          for (int r = 0; r < RR; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]); } } \
      if (tail) { __m512bh wv[RR]; \
        for (int r = 0; r < RR; r++) wv[r] = (__m512bh)_mm512_maskz_loadu_epi16(tail, w + (o + r) * I + Iv); \
        for (int m = 0; m < MM; m++) { const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(tail, x + m * ldx + Iv); \
          for (int r = 0; r < RR; r++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xv, wv[r]); } } \
    } else { \
      for (int r = 0; r < rr; r++) { \
        for (long i = 0; i < Iv; i += 32) { const __m512bh wv = (__m512bh)_mm512_loadu_si512(w + (o + r) * I + i); \
          for (int m = 0; m < MM; m++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)_mm512_loadu_si512(x + m * ldx + i), wv); } \
        if (tail) { const __m512bh wv = (__m512bh)_mm512_maskz_loadu_epi16(tail, w + (o + r) * I + Iv); \
          for (int m = 0; m < MM; m++) acc[m][r] = _mm512_dpbf16_ps(acc[m][r], (__m512bh)_mm512_maskz_loadu_epi16(tail, x + m * ldx + Iv), wv); } } \
    } \
    for (int m = 0; m < MM; m++) for (int r = 0; r < rr; r++) \
      y[m * ldy + o + r] = f32_to_bf16(_mm512_reduce_add_ps(acc[m][r]) + (b ? bf16_to_f32(b[o + r]) : 0.f)); \
  } \
}

DEF_F32(1, 4) DEF_F32(2, 4) DEF_F32(3, 4) DEF_F32(4, 4) DEF_F32(5, 2) DEF_F32(6, 2) DEF_F32(7, 2) DEF_F32(8, 2)
DEF_BF16(2, 4) DEF_BF16(3, 4) DEF_BF16(4, 4) DEF_BF16(5, 2) DEF_BF16(6, 2) DEF_BF16(7, 2) DEF_BF16(8, 2)

/* One row of x in bfloat16: each weight row is read start to end before the next (one sequential stream per thread,
 * four accumulators per row). Interleaving 4 short rows, as above, left the hardware prefetcher short streams:
 * 1.2x faster over the small config's bfloat16 weights on an AMD EPYC (Zen), 1.04x at 1.31B, in interleaved
 * microbenchmarks; float32 rows gained nothing from the same change and keep the 4-row kernel. */
static void bf16_m1(const uint16_t* x, long ldx, const uint16_t* w, const uint16_t* b, uint16_t* y, long ldy, long o0,
                    long o1, long I) {
  (void)ldx; (void)ldy;
  const __mmask32 tail = (__mmask32)((1ull << (I % 32)) - 1ull); const long Iv = I - I % 32, I4 = Iv - Iv % 128;
  for (long o = o0; o < o1; o++) {
    const uint16_t* row = w + o * I;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    long i = 0;
    for (; i < I4; i += 128)
      for (int u = 0; u < 4; u++)
        acc[u] = _mm512_dpbf16_ps(acc[u], (__m512bh)_mm512_loadu_si512(x + i + 32 * u),
                                  (__m512bh)_mm512_loadu_si512(row + i + 32 * u));
    for (; i < Iv; i += 32)
      acc[0] = _mm512_dpbf16_ps(acc[0], (__m512bh)_mm512_loadu_si512(x + i), (__m512bh)_mm512_loadu_si512(row + i));
    if (tail)
      acc[1] = _mm512_dpbf16_ps(acc[1], (__m512bh)_mm512_maskz_loadu_epi16(tail, x + Iv),
                                (__m512bh)_mm512_maskz_loadu_epi16(tail, row + Iv));
    const float sum = _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
    y[o] = f32_to_bf16(sum + (b ? bf16_to_f32(b[o]) : 0.f));
  }
}

typedef void (*f32_fn)(const float*, long, const float*, const float*, float*, long, long, long, long);
typedef void (*bf16_fn)(const uint16_t*, long, const uint16_t*, const uint16_t*, uint16_t*, long, long, long, long);
static const f32_fn F32[9] = {0, f32_m1, f32_m2, f32_m3, f32_m4, f32_m5, f32_m6, f32_m7, f32_m8};
static const bf16_fn BF16[9] = {0, bf16_m1, bf16_m2, bf16_m3, bf16_m4, bf16_m5, bf16_m6, bf16_m7, bf16_m8};

/* Each thread takes one contiguous block of output rows, a multiple of `step` long. */
static inline void split(long O, long step, long* o0, long* o1) {
  const int nt = omp_get_num_threads(), t = omp_get_thread_num();
  const long per = ((O + nt - 1) / nt + step - 1) / step * step;
  *o0 = t * per < O ? t * per : O; *o1 = *o0 + per < O ? *o0 + per : O;
}

/* x: M x I (row stride ldx), w: O x I contiguous, b: O or NULL, y: M x O (row stride ldy). Returns 0, or 1 if M is
 * outside 1..8. */
int falcon_hf_linear_f32(const float* x, long ldx, const float* w, const float* b, float* y, long ldy, long M, long O,
                         long I, int threads) {
  if (M < 1 || M > 8) return 1;
  #pragma omp parallel num_threads(threads)
  { long o0, o1; split(O, 4, &o0, &o1); if (o0 < o1) F32[M](x, ldx, w, b, y, ldy, o0, o1, I); }
  return 0;
}
int falcon_hf_linear_bf16(const uint16_t* x, long ldx, const uint16_t* w, const uint16_t* b, uint16_t* y, long ldy,
                          long M, long O, long I, int threads) {
  if (M < 1 || M > 8) return 1;
  #pragma omp parallel num_threads(threads)
  { long o0, o1; split(O, 4, &o0, &o1); if (o0 < o1) BF16[M](x, ldx, w, b, y, ldy, o0, o1, I); }
  return 0;
}

typedef struct { uint8_t palette_id, start_row, reserved[14]; uint16_t colsb[16]; uint8_t rows[16]; } tile_config;

/* Linux hands AMX tile state to a process only on request; 0 when granted (torch's oneDNN asks the same). */
int falcon_hf_amx_enable(void) { return (int)syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA); }

/* bfloat16 on AMX: y (M x O) = x (M x I) W^T + b. W (O x I, row-major) is read in place as 16 x 32 "A" tiles, x is
 * packed once as the VNNI "B" operand (I/2 x M x 2), so one tile product covers 16 outputs x 32 inputs x all M rows
 * and the loop is bound by how fast W streams, not by arithmetic (AVX512-BF16 dot products are, from about 4 rows).
 * Requires I % 32 == 0 and 1 <= M <= 16; returns 0, 1 for unsupported sizes, 2 if out of memory. Output rows past the
 * last multiple of 16 go through the dot-product kernels. */
int falcon_hf_linear_bf16_amx(const uint16_t* x, long ldx, const uint16_t* w, const uint16_t* b, uint16_t* y, long ldy,
                              long M, long O, long I, int threads) {
  if (M < 1 || M > 16 || I % 32) return 1;
  uint16_t* packed = aligned_alloc(64, (size_t)I * M * 2 + 64);
  if (!packed) return 2;
  for (long kp = 0; kp < I / 2; kp++)
    for (long m = 0; m < M; m++) {
      packed[(kp * M + m) * 2] = x[m * ldx + 2 * kp];
      packed[(kp * M + m) * 2 + 1] = x[m * ldx + 2 * kp + 1];
    }
  const long tiled = O / 16 * 16;
  #pragma omp parallel num_threads(threads)
  {
    long o0, o1;
    split(tiled, 16, &o0, &o1);
    if (o0 < o1) {
      tile_config cfg; memset(&cfg, 0, sizeof cfg); cfg.palette_id = 1;
      cfg.rows[0] = 16; cfg.colsb[0] = (uint16_t)(M * 4);   /* C: 16 output rows x M floats */
      cfg.rows[1] = 16; cfg.colsb[1] = 64;                  /* A: 16 weight rows x 32 bf16 */
      cfg.rows[2] = 16; cfg.colsb[2] = (uint16_t)(M * 4);   /* B: 16 k-pairs x M x 2 bf16 */
      _tile_loadconfig(&cfg);
      float c[16 * 16];
      for (long o = o0; o < o1; o += 16) {
        const uint16_t* a = w + o * I;
        _tile_zero(0);
        for (long k = 0; k < I; k += 32) {
          _tile_loadd(1, a + k, I * 2);
          _tile_loadd(2, packed + k * M, M * 4);
          _tile_dpbf16ps(0, 1, 2);
        }
        _tile_stored(0, c, M * 4);
        for (int r = 0; r < 16; r++) {
          const float bias = b ? bf16_to_f32(b[o + r]) : 0.f;
          for (long m = 0; m < M; m++) y[m * ldy + o + r] = f32_to_bf16(c[r * M + m] + bias);
        }
      }
      _tile_release();
    }
  }
  for (long m = 0; tiled < O && m < M; m += 8)  /* the last O % 16 rows, 8 rows of x at a time */
    BF16[M - m < 8 ? M - m : 8](x + m * ldx, ldx, w, b, y + m * ldy, ldy, tiled, O, I);
  free(packed);
  return 0;
}
