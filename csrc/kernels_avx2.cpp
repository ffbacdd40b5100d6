// AVX2 + FMA build of the kernels: 8-float registers, 16 of them. Each 16-lane block of the
// shared plan runs as two independent 8-lane parts (kernel_body.inc, PSC_HL), with tiles sized
// for 16 registers; masks are AVX2 masked loads, lane reversal one permute. Built with target
// pragmas like the AVX-512 file; dispatch.cpp calls in here only after checking the CPU.
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include "psconv_kernels.h"
#pragma GCC push_options
#pragma GCC target("avx2,fma,bmi2")
#include <immintrin.h>

namespace {
typedef __m256 H;
#define PSC_HL 8
inline H hzero() { return _mm256_setzero_ps(); }
inline H hload(const float* p) { return _mm256_loadu_ps(p); }
// Lane i of the result is all ones where bit i of m is set.
inline __m256i lanes_of(unsigned m) {
    const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
    return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32((int)m), bits), bits);
}
// Masked-off lanes are neither read (no fault past the tensor's end) nor kept: they are zero.
inline H hloadm(const float* p, unsigned m) { return _mm256_maskload_ps(p, lanes_of(m)); }
inline H hloadm2(const float* lo, const float* hi, unsigned mlo, unsigned mhi) {
    return _mm256_or_ps(hloadm(lo, mlo), hloadm(hi, mhi));  // disjoint masks
}
inline H hfma(H a, H b, H c) { return _mm256_fmadd_ps(a, b, c); }
inline H hadd(H a, H b) { return _mm256_add_ps(a, b); }
inline void hstore(float* p, H v) { _mm256_storeu_ps(p, v); }
// Pair broadcast: lanes 2i and 2i+1 get p[0] and p[1]; masked: bit 0 reads p[0], bit 1 p[1].
inline H hbcast2(const float* p) { return _mm256_castpd_ps(_mm256_broadcast_sd((const double*)p)); }
inline H hbcast2m(const float* p, unsigned m2) {
    const __m128i m = _mm_setr_epi32((m2 & 1u) ? -1 : 0, (m2 & 2u) ? -1 : 0, 0, 0);
    return _mm256_castpd_ps(_mm256_broadcastsd_pd(_mm_castps_pd(_mm_maskload_ps(p, m))));
}
// The epilogue on nv valid lanes: bias, residual (laid out as the output), ReLU.
inline H epilogue(H r, const psc_epi& e, long at, unsigned m) {
    if (e.bias) r = _mm256_add_ps(r, hloadm(e.bias, m));
    if (e.res) r = _mm256_add_ps(r, hloadm(e.res + at, m));
    if (e.relu) r = _mm256_max_ps(_mm256_setzero_ps(), r);  // this operand order keeps NaN
    return r;
}
inline void store_n(float* dst, H r, int nv, unsigned m) {
    if (nv >= 8)
        _mm256_storeu_ps(dst, r);
    else
        _mm256_maskstore_ps(dst, lanes_of(m), r);
}
inline H reversed(H v) { return _mm256_permutevar8x32_ps(v, _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0)); }
inline void hstore_out(float* dst, H v, const psc_epi& e, long at, int nv) {
    const unsigned m = nv >= 8 ? 0xFFu : (1u << nv) - 1u;
    store_n(dst, epilogue(reversed(v), e, at, m), nv, m);
}
// Full part to a 32-byte aligned address, bypassing the caches (large outputs).
inline void hstore_out_nt(float* dst, H v, const psc_epi& e, long at) {
    _mm256_stream_ps(dst, epilogue(reversed(v), e, at, 0xFFu));
}
inline void hstore_res(float* dst, H v, const psc_epi& e, long at, int nv, bool nt) {
    const unsigned m = nv >= 8 ? 0xFFu : (1u << nv) - 1u;
    v = epilogue(v, e, at, m);
    if (nv >= 8 && nt)
        _mm256_stream_ps(dst, v);
    else
        store_n(dst, v, nv, m);
}
inline void vfence() { _mm_sfence(); }
}  // namespace

// 16 registers: P*F accumulators + F weights + 1 input (forward), K*F + F + 1 (weight gradient).
#define PSC_TILES_F1(X) X(1) X(2) X(4) X(8) X(12)
#define PSC_TILES_F2(X) X(1) X(2) X(4) X(6)
#define PSC_TILES_F4(X) X(1) X(2) X(3)  // 3: one weight is read from memory per entry
#define PSC_GW_K1 12
#define PSC_GW_K2 6
#define PSC_GW_K4 3  // 3 x 4 + 4 + 1 = 17: one dy block is read from memory (measured: 1.2-1.4x faster than K = 2)
#define PSC_SUFFIX avx2
#define PSC_CONTIG_TILES 1
#define PSC_IMAGE_BLOCK_BYTES (1 << 20)
#define PSC_GW_TILE_BYTES (16 << 10)
#define PSC_SPLIT_SMALL_LAYERS 1
#define PSC_CONTIG_P1 12, 8
#define PSC_CONTIG_P2 6, 4
#define PSC_CONTIG_P4 3, 2
#define PSC_SMALL_MAPS_ON  // kernel_small.inc: measured faster here
#include "kernel_body.inc"
#pragma GCC pop_options

#else
#include "psconv_kernels.h"
extern "C" int psc_part_lanes_avx2(void) { return -2; }
extern "C" int psc_conv_avx2(const psc_args*) { return -2; }
extern "C" int psc_gradw_avx2(const psc_args*, const float*) { return -2; }
extern "C" int psc_gradw2_avx2(const psc_args*, const float*, const int*, int, int, int, int, int, int, int) {
    return -2;
}
#endif
