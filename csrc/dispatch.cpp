// C entry points called from Python through ctypes: pick the best build for this CPU once.
#include <stdlib.h>
#include <string.h>

#include "psconv_kernels.h"

namespace {
int detect() {
    // PSCONV_KERNEL_ISA=generic forces the portable path (tests, debugging).
    const char* env = getenv("PSCONV_KERNEL_ISA");
    if (env && strcmp(env, "generic") == 0) return 0;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl"))
        return 1;
#endif
    return 0;
}
int isa_level() {
    static int level = detect();
    return level;
}
}  // namespace

extern "C" {
int psc_abi_version(void) { return PSC_ABI_VERSION; }
int psc_isa(void) { return isa_level(); }
int psc_conv(const psc_args* a) { return isa_level() == 1 ? psc_conv_avx512(a) : psc_conv_generic(a); }
int psc_gradw(const psc_args* a, const float* dy) {
    return isa_level() == 1 ? psc_gradw_avx512(a, dy) : psc_gradw_generic(a, dy);
}
int psc_gradw2(const psc_args* a, const float* dy, const int* chunks, int nch, int H, int W, int Ho,
               int Wo, int pad_h, int pad_w) {
    return isa_level() == 1 ? psc_gradw2_avx512(a, dy, chunks, nch, H, W, Ho, Wo, pad_h, pad_w)
                            : psc_gradw2_generic(a, dy, chunks, nch, H, W, Ho, Wo, pad_h, pad_w);
}
}
