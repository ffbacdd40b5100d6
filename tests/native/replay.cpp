// Replays the kernel cases of tests/native/kernel_cases.py against a build of csrc/ linked
// into this program (make test-aarch64: cross-compiled, run under qemu-aarch64). Each case's
// output is compared with PyTorch's float64 reference; exit status 1 if any case differs.
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <string>
#include <vector>

#include "psconv_kernels.h"

namespace {
const char* kInts[] = {"B", "cin", "cout", "in_pix", "out_pix", "ng", "nc", "wrap", "pmax0", "pmax1", "pmax2",
                       "bcast", "nout", "nfb", "relu", "H", "W", "Ho", "Wo", "ph", "pw"};
const int kNumInts = sizeof kInts / sizeof *kInts;
enum { GROUPS, SEGS, ENTS, CLASSES, POS, OUTMAP, CHUNKS, INVERSE, NUM_INT_ARRAYS };
enum { X, W, BIAS, RES, DY, EXPECTED, NUM_FLOAT_ARRAYS };

struct Reader {
    FILE* f;
    bool ok = true;
    template <typename T>
    T get() {
        T v{};
        ok = ok && fread(&v, sizeof v, 1, f) == 1;
        return v;
    }
    template <typename T>
    std::vector<T> array() {
        const int64_t n = get<int64_t>();
        std::vector<T> v(n > 0 ? (size_t)n : 0);
        if (n > 0) ok = ok && fread(v.data(), sizeof(T), (size_t)n, f) == (size_t)n;
        return v;
    }
};

template <typename T>
const T* ptr(const std::vector<T>& v) {
    return v.empty() ? nullptr : v.data();
}

// One case: run it, return max |got - want| / max |want|.
double run_case(Reader& r, int kind, std::string& label) {
    int ints[kNumInts];
    for (int i = 0; i < kNumInts; ++i) ints[i] = r.get<int32_t>();
    std::vector<int32_t> ia[NUM_INT_ARRAYS];
    std::vector<float> fa[NUM_FLOAT_ARRAYS];
    for (auto& a : ia) a = r.array<int32_t>();
    for (auto& a : fa) a = r.array<float>();
    const int64_t out_len = r.get<int64_t>();
    const int32_t nlabel = r.get<int32_t>();
    label.assign((size_t)(nlabel > 0 ? nlabel : 0), ' ');
    if (nlabel > 0) r.ok = r.ok && fread(&label[0], 1, (size_t)nlabel, r.f) == (size_t)nlabel;
    if (!r.ok) return -1.0;

    float* y = (float*)aligned_alloc(64, sizeof(float) * (size_t)((out_len + 16) / 16 * 16));
    psc_args a;
    memset(&a, 0, sizeof a);
    a.x = ptr(fa[X]);
    a.y = y;
    a.w = ptr(fa[W]);
    a.bias = ptr(fa[BIAS]);
    a.B = ints[0], a.cin = ints[1], a.cout = ints[2], a.in_pix = ints[3], a.out_pix = ints[4];
    a.groups = ptr(ia[GROUPS]), a.ng = ints[5];
    a.segs = ptr(ia[SEGS]), a.ents = ptr(ia[ENTS]);
    a.classes = ptr(ia[CLASSES]), a.nc = ints[6], a.pos = ptr(ia[POS]);
    a.nthreads = 2, a.wrap = ints[7];
    a.pmax[0] = ints[8], a.pmax[1] = ints[9], a.pmax[2] = ints[10];
    a.bcast = ints[11], a.outmap = ptr(ia[OUTMAP]), a.nout = ints[12], a.nfb = ints[13];
    a.res = ptr(fa[RES]), a.relu = ints[14];
    int rc;
    if (kind == 0)
        rc = psc_conv(&a);
    else if (kind == 1)
        rc = psc_gradw(&a, fa[DY].data());
    else
        rc = psc_gradw2(&a, fa[DY].data(), ia[CHUNKS].data(), (int)(ia[CHUNKS].size() / PSC_CHUNK_STRIDE), ints[15],
                        ints[16], ints[17], ints[18], ints[19], ints[20]);
    const std::vector<float>& want = fa[EXPECTED];
    double err = 0.0, scale = 1e-30;
    for (size_t i = 0; i < want.size(); ++i) {
        // Weight gradients come in the packed layout: value i sits at inverse[i].
        const double got = kind == 0 ? y[i] : y[ia[INVERSE][i]];
        const double d = fabs(got - want[i]);
        err = d > err || d != d ? d : err;
        scale = fabs(want[i]) > scale ? fabs(want[i]) : scale;
    }
    free(y);
    return rc != 0 ? 1e30 : err / scale;
}
}  // namespace

int main(int argc, char** argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: %s CASES (written by tests/native/kernel_cases.py write)\n", argv[0]);
        return 2;
    }
    Reader r{fopen(argv[1], "rb")};
    char header[8];
    if (!r.f || fread(header, 1, 8, r.f) != 8 || memcmp(header, "PSCCASE2", 8) != 0) {
        fprintf(stderr, "%s: not a kernel case file\n", argv[1]);
        return 2;
    }
    const char* isa_names[] = {"generic", "avx512", "avx2", "neon"};
    const int isa = psc_isa();
    const char* isa_name = isa >= 0 && isa < 4 ? isa_names[isa] : "?";
    // The forward cases' weights are packed for one part width; another build reads them wrongly.
    const int lanes = r.get<int32_t>();
    if (lanes != psc_part_lanes()) {
        fprintf(stderr, "%s: weights packed for %d-lane parts, but the %s build reads %d-lane parts\n", argv[1],
                lanes, isa_name, psc_part_lanes());
        return 2;
    }
    const int n = r.get<int32_t>();
    int bad = 0, done = 0;
    for (int i = 0; i < n; ++i) {
        const int kind = r.get<int32_t>();
        std::string label;
        const double err = run_case(r, kind, label);
        if (err < 0) {
            fprintf(stderr, "%s: truncated at case %d\n", argv[1], i);
            return 2;
        }
        ++done;
        if (!(err < 1e-4)) {
            ++bad;
            printf("  FAIL %s: relative error %.2e\n", label.c_str(), err);
        }
    }
    fclose(r.f);
    printf("%s: %d of %d kernel cases match the reference\n", isa_name, done - bad, done);
    return bad ? 1 : 0;
}
