// Portable build of the kernels: 16-float arrays that the compiler vectorises for the baseline
// ISA. Same algorithm and data layout as the AVX-512 build, used on other CPUs and in tests.
#include "psconv_kernels.h"

namespace {
struct V {
    float v[16];
};
inline V vzero() {
    V r;
    for (int i = 0; i < 16; ++i) r.v[i] = 0.0f;
    return r;
}
inline V vload(const float* p) {
    V r;
    for (int i = 0; i < 16; ++i) r.v[i] = p[i];
    return r;
}
inline V vloadm(const float* p, unsigned m) {
    V r;
    for (int i = 0; i < 16; ++i) r.v[i] = ((m >> i) & 1u) ? p[i] : 0.0f;
    return r;
}
inline V vloadm2(const float* lo, const float* hi, unsigned mlo, unsigned mhi) {
    V r;
    for (int i = 0; i < 16; ++i) r.v[i] = ((mlo >> i) & 1u) ? lo[i] : (((mhi >> i) & 1u) ? hi[i] : 0.0f);
    return r;
}
inline V vfma(V a, V b, V c) {
    V r;
    for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] * b.v[i] + c.v[i];
    return r;
}
inline V vadd(V a, V b) {
    V r;
    for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] + b.v[i];
    return r;
}
inline void vstore(float* p, V v) {
    for (int i = 0; i < 16; ++i) p[i] = v.v[i];
}
inline void vstore_out(float* dst, V v, const float* bias, int nv) {
    for (int i = 0; i < nv; ++i) dst[i] = v.v[15 - i] + (bias ? bias[i] : 0.0f);
}
}  // namespace

#define PSC_SUFFIX generic
#include "kernel_body.inc"
