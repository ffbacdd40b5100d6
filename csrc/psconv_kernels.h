// Pattern-sparse 3x3 convolution kernels: shared declarations.
//
// Data layout: activations are NHWC (PyTorch channels_last), fp32. Weights are "diagonal
// packed": lane j of filter block fb holds filter f = 16*fb + 15 - j paired with input channel
// c = d + j, so every lane of one vector has the same f + c and therefore (for periodic
// patterns) the same tap support. An input vector is then 16 contiguous channels of one pixel
// and the inner loop is vector-load x vector-FMA with no broadcast and no index arrays; the
// lane reversal of the filters is undone once per output tile.
//
// Plan arrays (built by psconv/kernels/plan_builder.py, all int32):
//   groups  [ng][GRP_STRIDE]: F, fb0..fb3, seg_begin, seg_end, ent_begin, ent_end, woff16
//   segs    [ns][SEG_STRIDE]: tap, e_local (first entry inside the group), count, nsplit, 0
//   ents    [ne][2]:          tap, d (expanded segments, for the weight-gradient kernel)
//   classes [nc][CLS_STRIDE]: tapmask, npos, pos_begin, delta[9] (pixel offsets per tap)
//   pos     [npos][2]:        out pixel index in image, virtual input pixel index in image
//
// Packed weights (w), group after group from float woff16 * 16: the forward kernels read a
// group of F blocks and n entries part-major, [part h][entry][block][L lanes], where a part is
// the L = psc_part_lanes() lanes one register of the running build holds (lanes h*L .. h*L+L-1
// of each 16-lane block): one pass over the group's tiles per part then reads contiguous
// weights. With L = 16 (AVX-512, generic) that is simply [entry][block][16]. The weight-gradient
// kernels write that L = 16 layout on every build.
//
// Pair-broadcast plans (bcast = 2, for periods that do not divide 16): lane j of a block reads
// channel d + j % 2 of the pixel (one 8-byte broadcast load); lanes hold filters in any order,
// so tiles write every block to a per-thread scratch row and outmap puts the lanes back in
// filter order once per pixel.
#pragma once

#define PSC_GRP_STRIDE 10
#define PSC_SEG_STRIDE 5
#define PSC_CLS_STRIDE 12
#define PSC_CHUNK_STRIDE 70
#define PSC_OUTMAP_STRIDE 19

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    const float* x;     // input, NHWC [B][in_pix][cin]
    float* y;           // output, NHWC [B][out_pix][cout]
    const float* w;     // packed weights
    const float* bias;  // [cout] or NULL
    int B, cin, cout, in_pix, out_pix;
    const int* groups;
    int ng;
    const int* segs;
    const int* ents;
    const int* classes;
    int nc;
    const int* pos;
    int nthreads;
    int wrap;      // 1: diagonal d reads channels (d + j) mod cin (needs cin >= 16)
    int pmax[3];   // largest pixel tile for F = 1, 2, 4 filter blocks (0: no cap)
    int stream_out;  // set by psc_conv itself: non-temporal output stores (large outputs)
    int bcast;          // 0: diagonal packing; 2: pair broadcast (lane j reads channel d + j % 2)
    const int* outmap;  // bcast plans: [nout][OUTMAP_STRIDE] q, block, lane mask, lane index x16
    int nout;
    int nfb;            // filter blocks of the plan (bcast plans: lanes per pixel / 16)
    // Output epilogue (inference form): y = relu?(conv + bias + res), res laid out as y or NULL.
    const float* res;
    int relu;
} psc_args;

#define PSC_ABI_VERSION 6

// What the store of an output vector adds: bias (at the vector's first filter), the residual
// at the same place as the output (res + at), then ReLU.
typedef struct {
    const float* bias;
    const float* res;
    int relu;
} psc_epi;

// The entry points (dispatch.cpp): the best build for this CPU, or PSCONV_KERNEL_ISA's.
int psc_abi_version(void);
int psc_isa(void);  // 0 generic, 1 avx512, 2 avx2, 3 neon
int psc_part_lanes(void);  // lanes per register of that build: the packed weights' part width
int psc_conv(const psc_args* a);
int psc_gradw(const psc_args* a, const float* dy);
int psc_gradw2(const psc_args* a, const float* dy, const int* chunks, int nch, int H, int W, int Ho, int Wo,
               int pad_h, int pad_w);

// One build per instruction set.
int psc_part_lanes_generic(void);
int psc_conv_generic(const psc_args* a);
int psc_gradw_generic(const psc_args* a, const float* dy);
int psc_gradw2_generic(const psc_args* a, const float* dy, const int* chunks, int nch, int H, int W,
                       int Ho, int Wo, int pad_h, int pad_w);
int psc_gradw2_avx512(const psc_args* a, const float* dy, const int* chunks, int nch, int H, int W,
                      int Ho, int Wo, int pad_h, int pad_w);
int psc_part_lanes_avx512(void);
int psc_conv_avx512(const psc_args* a);
int psc_gradw_avx512(const psc_args* a, const float* dy);
int psc_part_lanes_avx2(void);
int psc_conv_avx2(const psc_args* a);
int psc_gradw_avx2(const psc_args* a, const float* dy);
int psc_gradw2_avx2(const psc_args* a, const float* dy, const int* chunks, int nch, int H, int W,
                    int Ho, int Wo, int pad_h, int pad_w);
int psc_part_lanes_neon(void);
int psc_conv_neon(const psc_args* a);
int psc_gradw_neon(const psc_args* a, const float* dy);
int psc_gradw2_neon(const psc_args* a, const float* dy, const int* chunks, int nch, int H, int W,
                    int Ho, int Wo, int pad_h, int pad_w);

#ifdef __cplusplus
}
#endif
