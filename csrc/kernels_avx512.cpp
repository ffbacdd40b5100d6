// AVX-512 build of the kernels. The target pragma replaces -march flags so that the package is
// built once for any x86-64 machine; dispatch.cpp only calls in here after checking the CPU.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "psconv_kernels.h"
#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512dq,avx512vl,fma,avx2,bmi2,prfchw")
#include <immintrin.h>

namespace {
typedef __m512 V;
inline V vzero() { return _mm512_setzero_ps(); }
inline V vload(const float* p) { return _mm512_loadu_ps(p); }
inline V vloadm(const float* p, unsigned m) { return _mm512_maskz_loadu_ps((__mmask16)m, p); }
// Lanes in mlo come from lo, lanes in mhi from hi, the rest are zero (channel wrap-around).
inline V vloadm2(const float* lo, const float* hi, unsigned mlo, unsigned mhi) {
    return _mm512_mask_loadu_ps(_mm512_maskz_loadu_ps((__mmask16)mlo, lo), (__mmask16)mhi, hi);
}
inline V vfma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
inline void vstore(float* p, V v) { _mm512_storeu_ps(p, v); }
inline V vadd(V a, V b) { return _mm512_add_ps(a, b); }
// The epilogue: bias, residual (laid out as the output) and ReLU, each when asked for.
inline V epilogue(V r, const psc_epi& e, long at, __mmask16 m) {
    if (e.bias) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, e.bias));
    if (e.res) r = _mm512_add_ps(r, _mm512_maskz_loadu_ps(m, e.res + at));
    if (e.relu) r = _mm512_max_ps(_mm512_setzero_ps(), r);  // this operand order keeps NaN (as torch.relu)
    return r;
}
inline void vstore_out(float* dst, V v, const psc_epi& e, long at, int nv) {
    const __m512i rev = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __mmask16 m = nv >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nv) - 1u);
    V r = epilogue(_mm512_permutexvar_ps(rev, v), e, at, m);
    if (nv >= 16)
        _mm512_storeu_ps(dst, r);
    else
        _mm512_mask_storeu_ps(dst, m, r);
}
// Full 16-lane block to a 64-byte aligned address, bypassing the caches: for outputs too large
// to stay cached until the next layer reads them, this saves reading every line before writing.
inline void vstore_out_nt(float* dst, V v, const psc_epi& e, long at) {
    const __m512i rev = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    _mm512_stream_ps(dst, epilogue(_mm512_permutexvar_ps(rev, v), e, at, (__mmask16)0xFFFF));
}
inline void vfence() { _mm_sfence(); }
// Pair broadcast: lanes 2i and 2i+1 get p[0] and p[1]. Masked: bit 0 keeps p[0], bit 1 p[1]
// (the other channel lies outside the tensor and is not read).
inline V vbcast2(const float* p) { return _mm512_castpd_ps(_mm512_broadcastsd_pd(_mm_load_sd((const double*)p))); }
inline V vbcast2m(const float* p, unsigned m2) {
    return _mm512_broadcast_f32x2(_mm_maskz_loadu_ps((__mmask8)m2, p));
}
// Lanes in m of r get src[idx[lane]]; the others keep r.
inline V vperm_merge(V r, unsigned m, const int* idx, V src) {
    return _mm512_mask_permutexvar_ps(r, (__mmask16)m, _mm512_loadu_si512(idx), src);
}
// Filter-ordered vector to the output: add bias, store nv lanes (nt: full, aligned, streaming).
inline void vstore_res(float* dst, V v, const psc_epi& e, long at, int nv, bool nt) {
    const __mmask16 m = nv >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << nv) - 1u);
    v = epilogue(v, e, at, m);
    if (nv < 16)
        _mm512_mask_storeu_ps(dst, m, v);
    else if (nt)
        _mm512_stream_ps(dst, v);
    else
        _mm512_storeu_ps(dst, v);
}
}  // namespace

#define PSC_SUFFIX avx512
#define PSC_CONTIG_TILES 1  // fixed-stride tiles: worth their compile time only here
#include "kernel_body.inc"
#pragma GCC pop_options

#else
#include "psconv_kernels.h"
extern "C" int psc_part_lanes_avx512(void) { return -2; }
extern "C" int psc_conv_avx512(const psc_args*) { return -2; }
extern "C" int psc_gradw_avx512(const psc_args*, const float*) { return -2; }
extern "C" int psc_gradw2_avx512(const psc_args*, const float*, const int*, int, int, int, int, int, int,
                                 int) {
    return -2;
}
#endif
