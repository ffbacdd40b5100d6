// C entry points called from Python through ctypes: pick the best build for this CPU once.
#include <stdlib.h>
#include <string.h>

#include "psconv_kernels.h"

namespace {
// Instruction sets, as psc_isa() reports them (psconv/kernels/binding.py names them).
enum Isa { GENERIC = 0, AVX512 = 1, AVX2 = 2, NEON = 3 };

int best_available() {
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return AVX2;
#elif defined(__aarch64__)
    return NEON;  // Advanced SIMD is part of every AArch64 CPU
#endif
    return GENERIC;
}

int detect() {
    // PSCONV_KERNEL_ISA=avx512|avx2|neon|generic forces a build (tests, benchmarks); one this
    // CPU cannot run is not taken (the best one it can run is).
    const int best = best_available();
    const char* env = getenv("PSCONV_KERNEL_ISA");
    if (!env || !*env) return best;
    if (strcmp(env, "generic") == 0) return GENERIC;
    if (strcmp(env, "avx2") == 0 && (best == AVX512 || best == AVX2)) return AVX2;
    if (strcmp(env, "avx512") == 0 && best == AVX512) return AVX512;
    if (strcmp(env, "neon") == 0 && best == NEON) return NEON;
    return best;
}

int isa_level() {
    static int level = detect();
    return level;
}
}  // namespace

extern "C" {
int psc_abi_version(void) { return PSC_ABI_VERSION; }
int psc_isa(void) { return isa_level(); }
int psc_part_lanes(void) {
    switch (isa_level()) {
        case AVX512: return psc_part_lanes_avx512();
        case AVX2: return psc_part_lanes_avx2();
        case NEON: return psc_part_lanes_neon();
        default: return psc_part_lanes_generic();
    }
}
int psc_conv(const psc_args* a) {
    switch (isa_level()) {
        case AVX512: return psc_conv_avx512(a);
        case AVX2: return psc_conv_avx2(a);
        case NEON: return psc_conv_neon(a);
        default: return psc_conv_generic(a);
    }
}
int psc_gradw(const psc_args* a, const float* dy) {
    switch (isa_level()) {
        case AVX512: return psc_gradw_avx512(a, dy);
        case AVX2: return psc_gradw_avx2(a, dy);
        case NEON: return psc_gradw_neon(a, dy);
        default: return psc_gradw_generic(a, dy);
    }
}
int psc_gradw2(const psc_args* a, const float* dy, const int* chunks, int nch, int H, int W, int Ho,
               int Wo, int pad_h, int pad_w) {
    switch (isa_level()) {
        case AVX512: return psc_gradw2_avx512(a, dy, chunks, nch, H, W, Ho, Wo, pad_h, pad_w);
        case AVX2: return psc_gradw2_avx2(a, dy, chunks, nch, H, W, Ho, Wo, pad_h, pad_w);
        case NEON: return psc_gradw2_neon(a, dy, chunks, nch, H, W, Ho, Wo, pad_h, pad_w);
        default: return psc_gradw2_generic(a, dy, chunks, nch, H, W, Ho, Wo, pad_h, pad_w);
    }
}
}
