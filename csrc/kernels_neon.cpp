// AArch64 Advanced SIMD (NEON) build of the kernels: 4-float registers, 32 of them. Each
// 16-lane block of the shared plan runs as four independent 4-lane parts (kernel_body.inc,
// PSC_HL); the 32 registers hold the same tiles as the AVX-512 build. NEON has no masked
// loads: the partial diagonals at a channel edge (a few per layer) go through a small buffer.
#if defined(__aarch64__)
#include <arm_neon.h>

#include "psconv_kernels.h"

namespace {
typedef float32x4_t H;
#define PSC_HL 4
inline H hzero() { return vdupq_n_f32(0.0f); }
inline H hload(const float* p) { return vld1q_f32(p); }
// Masked-off lanes are neither read (they may lie past the tensor's end) nor kept: zero.
inline H hloadm(const float* p, unsigned m) {
    if (m == 0xFu) return vld1q_f32(p);
    float t[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    for (int i = 0; i < 4; ++i)
        if ((m >> i) & 1u) t[i] = p[i];
    return vld1q_f32(t);
}
inline H hloadm2(const float* lo, const float* hi, unsigned mlo, unsigned mhi) {
    // Disjoint masks: an OR of the bits keeps every value (and the sign of every zero).
    return vreinterpretq_f32_u32(
        vorrq_u32(vreinterpretq_u32_f32(hloadm(lo, mlo)), vreinterpretq_u32_f32(hloadm(hi, mhi))));
}
inline H hfma(H a, H b, H c) { return vfmaq_f32(c, a, b); }
inline H hadd(H a, H b) { return vaddq_f32(a, b); }
inline void hstore(float* p, H v) { vst1q_f32(p, v); }
// Pair broadcast: lanes 2i and 2i+1 get p[0] and p[1]; masked: bit 0 reads p[0], bit 1 p[1].
inline H hbcast2(const float* p) {
    const float32x2_t v = vld1_f32(p);
    return vcombine_f32(v, v);
}
inline H hbcast2m(const float* p, unsigned m2) {
    const float t[2] = {(m2 & 1u) ? p[0] : 0.0f, (m2 & 2u) ? p[1] : 0.0f};
    return hbcast2(t);
}
inline H reversed(H v) {
    const H r = vrev64q_f32(v);  // 1 0 3 2
    return vextq_f32(r, r, 2);   // 3 2 1 0
}
// The epilogue on the valid lanes m: bias, residual (laid out as the output), ReLU.
inline H epilogue(H r, const psc_epi& e, long at, unsigned m) {
    if (e.bias) r = vaddq_f32(r, hloadm(e.bias, m));
    if (e.res) r = vaddq_f32(r, hloadm(e.res + at, m));
    if (e.relu) r = vmaxq_f32(vdupq_n_f32(0.0f), r);  // FMAX returns NaN for a NaN input
    return r;
}
inline void store_n(float* dst, H r, int nv) {
    if (nv >= 4) {
        vst1q_f32(dst, r);
        return;
    }
    float t[4];
    vst1q_f32(t, r);
    for (int i = 0; i < nv; ++i) dst[i] = t[i];
}
inline void hstore_out(float* dst, H v, const psc_epi& e, long at, int nv) {
    const unsigned m = nv >= 4 ? 0xFu : (1u << nv) - 1u;
    store_n(dst, epilogue(reversed(v), e, at, m), nv);
}
inline void hstore_out_nt(float* dst, H v, const psc_epi& e, long at) { hstore_out(dst, v, e, at, 4); }
inline void hstore_res(float* dst, H v, const psc_epi& e, long at, int nv, bool) {
    const unsigned m = nv >= 4 ? 0xFu : (1u << nv) - 1u;
    store_n(dst, epilogue(v, e, at, m), nv);
}
inline void vfence() {}
}  // namespace

#define PSC_SUFFIX neon
#include "kernel_body.inc"

#else
#include "psconv_kernels.h"
extern "C" int psc_part_lanes_neon(void) { return -2; }
extern "C" int psc_conv_neon(const psc_args*) { return -2; }
extern "C" int psc_gradw_neon(const psc_args*, const float*) { return -2; }
extern "C" int psc_gradw2_neon(const psc_args*, const float*, const int*, int, int, int, int, int, int, int) {
    return -2;
}
#endif
