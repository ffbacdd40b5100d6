// Portable build of the kernels: 16-float vectors that the compiler maps to the baseline ISA.
// Same algorithm and data layout as the AVX-512 build, used on other CPUs and in tests.
#include <string.h>

#include "psconv_kernels.h"

// -O2: the fallback is rarely hot, and -O3 takes the compiler several times longer here.
#pragma GCC optimize("O2")

namespace {
// GCC/Clang vector extension: element-wise operators, lowered to whatever the baseline ISA has
// (a loop over a 16-float struct took the compiler fifteen times longer, for the same code).
typedef float V __attribute__((vector_size(64)));
inline V vzero() { return V{}; }
inline V vload(const float* p) {
    V r;
    memcpy(&r, p, sizeof(V));
    return r;
}
inline V vloadm(const float* p, unsigned m) {
    V r = {};
    for (int i = 0; i < 16; ++i)
        if ((m >> i) & 1u) r[i] = p[i];
    return r;
}
inline V vloadm2(const float* lo, const float* hi, unsigned mlo, unsigned mhi) {
    V r = {};
    for (int i = 0; i < 16; ++i) r[i] = ((mlo >> i) & 1u) ? lo[i] : (((mhi >> i) & 1u) ? hi[i] : 0.0f);
    return r;
}
inline V vfma(V a, V b, V c) { return a * b + c; }
inline V vadd(V a, V b) { return a + b; }
inline void vstore(float* p, V v) { memcpy(p, &v, sizeof(V)); }
inline float epilogue(float r, const psc_epi& e, long at, int i) {
    if (e.bias) r += e.bias[i];
    if (e.res) r += e.res[at + i];
    return e.relu && r < 0.0f ? 0.0f : r;
}
inline void vstore_out(float* dst, V v, const psc_epi& e, long at, int nv) {
    for (int i = 0; i < nv; ++i) dst[i] = epilogue(v[15 - i], e, at, i);
}
inline void vstore_out_nt(float* dst, V v, const psc_epi& e, long at) { vstore_out(dst, v, e, at, 16); }
inline void vfence() {}
inline V vbcast2(const float* p) {
    V r;
    for (int i = 0; i < 16; ++i) r[i] = p[i & 1];
    return r;
}
inline V vbcast2m(const float* p, unsigned m2) {
    V r;
    for (int i = 0; i < 16; ++i) r[i] = ((m2 >> (i & 1)) & 1u) ? p[i & 1] : 0.0f;
    return r;
}
inline V vperm_merge(V r, unsigned m, const int* idx, V src) {
    for (int i = 0; i < 16; ++i)
        if ((m >> i) & 1u) r[i] = src[idx[i]];
    return r;
}
inline void vstore_res(float* dst, V v, const psc_epi& e, long at, int nv, bool) {
    for (int i = 0; i < nv; ++i) dst[i] = epilogue(v[i], e, at, i);
}
}  // namespace

#define PSC_SUFFIX generic
#include "kernel_body.inc"
