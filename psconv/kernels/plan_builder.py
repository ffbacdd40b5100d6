"""Plans for the compiled kernels: packed-weight layout and pixel classes (numpy, built once).

Weight plan ("diagonal packing"): the lane dimension A is split into blocks of 16; lane j of
block fb is a = 16*fb + 15 - j, paired with b = d + j of the reduction dimension for each
diagonal d in [-15, B). All lanes of one (block, diagonal) then share a + b, so for periodic
patterns they share one tap support: the kernel loops over exactly those taps, and the input
it reads is 16 contiguous channels of a pixel. Blocks with identical per-diagonal tap sets
are grouped (up to 4) so that one input load feeds several filter blocks. Any mask works (pSC
just gets unions of taps, i.e. little saving), so correctness never depends on the family.

Pair-broadcast packing (period m not dividing 16, e.g. PS1 with period 9): with m odd, no two
16-filter blocks of the diagonal packing share a tap set below 160 channels, so every input
load feeds one FMA and the loads (most of them straddling two cache lines) bound the kernel.
Instead, lane j of a block reads channel d + j % 2 of a pixel (a 2-float broadcast, one short
load), and holds a filter of class (a mod m) = K - j % 2: all lanes again share one tap per
entry, blocks of the same K share entries (one load feeds several FMAs from 128 channels), and
the output lanes are put back in filter order once per pixel (``outmap``).

Geometry plan: output pixels are grouped into classes with the same set of in-range taps
(image border, and for the transposed convolution the stride parity), so a tile of pixels
never tests bounds and skips taps that fall on padding for all of its pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRP_STRIDE = 10
SEG_STRIDE = 5
CLS_STRIDE = 12
OUTMAP_STRIDE = 19


@dataclass
class WeightPlan:
    groups: np.ndarray  # int32 [ng, GRP_STRIDE]
    segs: np.ndarray  # int32 [ns, SEG_STRIDE]
    ents: np.ndarray  # int32 [ne, 2]
    gather: np.ndarray  # int64 [total]: value index for each packed float, nnz for a zero
    total: int  # packed floats
    executed_macs_per_pixel: int  # lane-MACs the kernel executes per output pixel (no border)
    needed_macs_per_pixel: int  # kept weights (= MACs per output pixel)
    wrap: bool  # diagonals wrap around the reduction axis
    bcast: int = 0  # 0: diagonal packing (lane j reads d + j); 2: pair broadcast (d + j % 2)
    outmap: np.ndarray | None = None  # int32 [nrec, OUTMAP_STRIDE] for bcast plans


@dataclass
class GeometryPlan:
    classes: np.ndarray  # int32 [nc, CLS_STRIDE]
    pos: np.ndarray  # int32 [npos, 2]
    in_pix: int
    out_pix: int


def _load_cost(mask: np.ndarray, wrap: bool) -> int:
    """Input loads per pixel of a plan: entries, plus one more for each wrapped tail entry."""
    A, Bd, _ = mask.shape
    nfb = (A + 15) // 16
    j = np.arange(16)
    a = np.minimum(np.arange(nfb)[:, None] * 16 + 15 - j[None, :], A - 1)
    a_ok = (np.arange(nfb)[:, None] * 16 + 15 - j[None, :]) < A
    d_all = np.arange(0, Bd) if wrap else np.arange(-15, Bd)
    b = d_all[:, None] + j[None, :]
    if wrap:
        b = b % Bd
    b_ok = (b >= 0) & (b < Bd)
    ok = a_ok[:, None, :] & b_ok[None, :, :]
    taps = (mask[a[:, None, :], np.clip(b, 0, Bd - 1)[None, :, :]] & ok[..., None]).any(axis=2).sum(-1)
    cost = int(taps.sum())
    if wrap:
        cost += int(taps[:, d_all > Bd - 16].sum())
    return cost


def additive_period(mask: np.ndarray) -> int | None:
    """The period m if ``mask[a, b]`` depends only on ``(a + b) mod m`` (m in 2..16), else None."""
    A, Bd, _ = mask.shape
    codes = (mask * (1 << np.arange(9))).sum(-1)  # [A, B]
    for m in range(2, min(16, A + Bd - 1) + 1):
        s = (np.arange(A)[:, None] + np.arange(Bd)[None, :]) % m
        table = np.full(m, -1, dtype=np.int64)
        table[s.reshape(-1)[::-1]] = codes.reshape(-1)[::-1]  # any representative per residue
        if (table[s] == codes).all():
            return m
    return None


def pair_lanes(A: int, m: int) -> np.ndarray:
    """Filter of each lane [nfb, 16] (-1: empty) for the pair-broadcast packing of period m.

    Even lanes hold filters of class K, odd lanes (which read the next channel) class K - 1,
    for K = 1, 3, 5, ...; with m odd the last class fills even lanes alone.
    """
    cls = [list(range(r, A, m)) for r in range(m)]
    blocks: list[np.ndarray] = []
    for K in range(1, m + 1, 2):
        even = cls[K] if K < m else []
        odd = cls[K - 1]
        if K == m:  # m odd: the last class has no partner
            even, odd = cls[m - 1], []
        for i in range(0, max(len(even), len(odd)), 8):
            blk = np.full(16, -1, dtype=np.int64)
            e, o = even[i : i + 8], odd[i : i + 8]
            blk[0 : 2 * len(e) : 2] = e
            blk[1 : 2 * len(o) : 2] = o
            blocks.append(blk)
    return np.stack(blocks)


def _outmap(filt: np.ndarray, A: int) -> np.ndarray:
    """Records (q, block, lane mask, lane index x16) that rebuild output vector q (filters 16q..)."""
    recs = []
    for q in range((A + 15) // 16):
        for fb in range(filt.shape[0]):
            js = np.nonzero((filt[fb] >= 16 * q) & (filt[fb] < 16 * q + 16))[0]
            if len(js) == 0:
                continue
            idx = np.zeros(16, dtype=np.int64)
            lanes = filt[fb, js] - 16 * q
            idx[lanes] = js
            recs.append([q, fb, int((1 << lanes).sum()), *idx.tolist()])
    return np.ascontiguousarray(np.asarray(recs, dtype=np.int32).reshape(-1, OUTMAP_STRIDE))


def _lanes(
    mask: np.ndarray, bcast: int, wrap: bool | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool]:
    """(filter of each block lane [nfb, 16], channel offset of each lane, diagonals, wrap)."""
    A, Bd, _ = mask.shape
    j = np.arange(16)
    if bcast:
        period = additive_period(mask)
        if bcast != 2 or period is None:
            raise ValueError("pair-broadcast packing needs a mask periodic in a + b")
        return pair_lanes(A, period), j % 2, np.arange(-1, Bd), False
    nfb = (A + 15) // 16
    a = (np.arange(nfb)[:, None] * 16 + 15 - j[None, :]).astype(np.int64)  # [nfb, 16]
    # Wrapping diagonals around the channel axis avoids half-empty diagonals at the ends; for
    # periodic patterns with m | B it changes no tap set. Otherwise (period 9 on 64 channels)
    # the wrapped tails need two taps and two loads: keep whichever loads less.
    if wrap is None:
        wrap = Bd >= 16 and 0.9 * _load_cost(mask, True) <= _load_cost(mask, False)
    return np.where(a < A, a, -1), j, (np.arange(0, Bd) if wrap else np.arange(-15, Bd)), wrap


def _block_groups(codes: np.ndarray, max_f: int) -> list[list[int]]:
    """Blocks with identical per-diagonal tap sets share every segment: groups of up to 4."""
    by_sig: dict[bytes, list[int]] = {}
    for fb in range(codes.shape[0]):
        by_sig.setdefault(codes[fb].tobytes(), []).append(fb)
    block_groups: list[list[int]] = []
    for fbs in by_sig.values():
        i = 0
        while i < len(fbs):
            rest = len(fbs) - i
            f = 4 if rest >= 4 and max_f >= 4 else (2 if rest >= 2 and max_f >= 2 else 1)
            block_groups.append(fbs[i : i + f])
            i += f
    return sorted(block_groups, key=lambda g: g[0])


def _segments(
    code: np.ndarray, d_all: np.ndarray, Bd: int, wrap: bool, bcast: int
) -> list[tuple[int, np.ndarray, int]]:
    """One segment per tap, diagonals ascending (long inner loops, sequential input reads):
    (tap, diagonal indices, how many of them are full-width)."""
    out = []
    for t in range(9):
        dsel = np.nonzero((code >> t) & 1)[0]
        if len(dsel) == 0:
            continue
        dv = d_all[dsel]
        # Full-width diagonals first: the kernels run them on plain loads and only the rest
        # (straddling the channel end, or the partial ones of an unwrapped plan) masked.
        if bcast:
            full = (dv >= 0) & (dv <= Bd - 2)
        else:
            full = dv <= Bd - 16 if wrap else (dv >= 0) & (dv <= Bd - 16)
        out.append((t, np.concatenate([dsel[full], dsel[~full]]), int(full.sum())))
    return out


def build_weight_plan(
    mask: np.ndarray, vidx: np.ndarray, max_f: int = 4, wrap: bool | None = None, bcast: int = 0
) -> WeightPlan:
    """Plan for ``out[a] += sum_{b,t} W[a,b,t] * in[b]`` with ``mask``/``vidx`` of shape [A, B, 9].

    ``vidx`` holds the index of each kept weight in the value vector (-1 where not kept).
    ``bcast=2`` builds the pair-broadcast packing; it needs ``additive_period(mask)``.
    """
    A, Bd, _ = mask.shape
    nnz = int(mask.sum())
    j = np.arange(16)
    a, coff, d_all, wrap = _lanes(mask, bcast, wrap)
    b = d_all[:, None] + coff[None, :]  # [nd, 16]
    if wrap:
        b = b % Bd
    ac, bc = np.clip(a, 0, A - 1), np.clip(b, 0, Bd - 1)
    ok = (a >= 0)[:, None, :] & ((b >= 0) & (b < Bd))[None, :, :]  # [nfb, nd, 16]
    m = mask[ac[:, None, :], bc[None, :, :]] & ok[..., None]  # [nfb, nd, 16, 9]
    codes = (m.any(axis=2) * (1 << np.arange(9))).sum(-1)  # tap set per block and diagonal
    vi = np.where(ok[..., None], vidx[ac[:, None, :], bc[None, :, :]], -1)  # [nfb, nd, 16, 9]
    vi = np.where(vi < 0, nnz, vi)
    groups, segs, ents, gathers = [], [], [], []
    woff16 = executed = 0
    for fbs in _block_groups(codes, max_f):
        F = len(fbs)
        seg_begin, ent_begin, e_local = len(segs), len(ents), 0
        t_parts, d_parts = [], []
        for t, dsel, nsplit in _segments(codes[fbs[0]], d_all, Bd, wrap, bcast):
            segs.append((t, e_local, len(dsel), nsplit, 0))
            t_parts.append(np.full(len(dsel), t))
            d_parts.append(dsel)
            e_local += len(dsel)
        if e_local == 0:
            continue
        t_arr, di_arr = np.concatenate(t_parts), np.concatenate(d_parts)
        ents.extend(zip(t_arr.tolist(), d_all[di_arr].tolist()))
        # gather[e, f, j] = vi[fbs[f], d_e, j, t_e]
        g = vi[np.asarray(fbs)[None, :, None], di_arr[:, None, None], j[None, None, :], t_arr[:, None, None]]
        gathers.append(g.reshape(-1))
        groups.append((F, *(fbs + [0] * (4 - F)), seg_begin, len(segs), ent_begin, len(ents), woff16))
        woff16 += e_local * F
        executed += e_local * F * 16
    gather = np.concatenate(gathers) if gathers else np.zeros(0, dtype=np.int64)
    return WeightPlan(
        groups=np.ascontiguousarray(np.asarray(groups, dtype=np.int32).reshape(-1, GRP_STRIDE)),
        segs=np.ascontiguousarray(np.asarray(segs, dtype=np.int32).reshape(-1, SEG_STRIDE)),
        ents=np.ascontiguousarray(np.asarray(ents, dtype=np.int32).reshape(-1, 2)),
        gather=gather.astype(np.int64),
        total=woff16 * 16,
        executed_macs_per_pixel=executed,
        needed_macs_per_pixel=nnz,
        wrap=wrap,
        bcast=bcast,
        outmap=_outmap(a, A) if bcast else None,
    )


def part_major_order(groups: np.ndarray, total: int, lanes: int) -> np.ndarray:
    """Where each float of the forward kernels' packed layout sits in the [entry][block][16]
    layout this module builds: a build whose registers hold ``lanes`` floats reads each group as
    [part][entry][block][lanes] (``csrc/psconv_kernels.h``), so that one pass over a group's
    tiles per part reads contiguous weights. The identity for 16 lanes."""
    if lanes <= 0 or 16 % lanes:
        raise ValueError(f"lanes must divide 16, got {lanes}")
    order = np.arange(total, dtype=np.int64)
    if lanes == 16:
        return order
    for F, *_, ent_begin, ent_end, woff16 in groups.tolist():
        nent, base = ent_end - ent_begin, woff16 * 16
        local = np.arange(nent * F * 16).reshape(nent, F, 16 // lanes, lanes).transpose(2, 0, 1, 3)
        order[base : base + local.size] = base + local.reshape(-1)
    return order


def build_geometry(mode: int, H: int, W: int, stride: tuple[int, int], pad: tuple[int, int]) -> GeometryPlan:
    """Pixel classes for a 3x3 conv on an H x W input.

    mode 0: forward, output pixels read input pixels (oy*s + ty - p, ox*s + tx - p).
    mode 1: transposed (grad-input), pixels of the H x W image read the Ho x Wo gradient.
    """
    sh, sw = stride
    ph, pw = pad
    Ho = (H + 2 * ph - 3) // sh + 1
    Wo = (W + 2 * pw - 3) // sw + 1
    ty = np.arange(9) // 3
    tx = np.arange(9) % 3
    if mode == 0:
        oy, ox = np.meshgrid(np.arange(Ho), np.arange(Wo), indexing="ij")
        oy, ox = oy.reshape(-1), ox.reshape(-1)
        iy = oy[:, None] * sh + ty[None, :] - ph
        ix = ox[:, None] * sw + tx[None, :] - pw
        valid = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        src = iy * W + ix
        base = (oy * sh) * W + ox * sw
        out_off = oy * Wo + ox
        key_extra = np.zeros((len(oy), 2), dtype=np.int64)
        in_pix, out_pix = H * W, Ho * Wo
    else:
        y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
        y, x = y.reshape(-1), x.reshape(-1)
        ay = y[:, None] + ph - ty[None, :]
        ax = x[:, None] + pw - tx[None, :]
        valid = (ay % sh == 0) & (ax % sw == 0)
        qy, qx = ay // sh, ax // sw
        valid &= (qy >= 0) & (qy < Ho) & (qx >= 0) & (qx < Wo)
        src = qy * Wo + qx
        base = ((y + ph) // sh) * Wo + (x + pw) // sw
        out_off = y * W + x
        key_extra = np.stack([(y + ph) % sh, (x + pw) % sw], axis=1)
        in_pix, out_pix = Ho * Wo, H * W
    tapmask = (valid * (1 << np.arange(9))).sum(1)
    keys = tapmask * 1024 + key_extra[:, 0] * 32 + key_extra[:, 1]
    classes, pos = [], []
    for k in np.unique(keys):
        sel = np.nonzero(keys == k)[0]
        tm = int(tapmask[sel[0]])
        delta = np.where(valid[sel[0]], src[sel[0]] - base[sel[0]], 0)
        dd = np.where(valid[sel], src[sel] - base[sel][:, None], 0)
        if not (dd == delta[None, :]).all():  # pragma: no cover - by construction
            raise AssertionError("inconsistent pixel class")
        classes.append((tm, len(sel), len(pos), *delta.tolist()))
        pos.extend(zip(out_off[sel].tolist(), base[sel].tolist()))
    return GeometryPlan(
        classes=np.ascontiguousarray(np.asarray(classes, dtype=np.int32).reshape(-1, CLS_STRIDE)),
        pos=np.ascontiguousarray(np.asarray(pos, dtype=np.int32).reshape(-1, 2)),
        in_pix=in_pix,
        out_pix=out_pix,
    )


CHUNK_STRIDE = 70
_CHUNK_K = {1: 12, 2: 10, 4: 6}


def build_gradw_chunks(plan: WeightPlan) -> np.ndarray:
    """Work list of the stride-1 weight-gradient kernel, which loops over input pixels.

    Each chunk is K diagonals x F filter blocks. Looping over input pixels moves the tap shift
    from x to dy, so the F blocks only need the same tap *per block* within a chunk, not the
    same tap set: groups of one block each (period 9 at 64 channels, random masks) are packed
    four to a chunk and one x load again feeds four FMAs. Record layout (int32):
    F, K, tap[4], slot[4], d[12], dst[12][4] (packed-weight vector index, -1: discard).
    """
    groups, ents = plan.groups, plan.ents
    chunks: list[np.ndarray] = []
    slot = 0

    def emit(F: int, taps: list[int], slots: list[int], items: list[tuple[int, list[int]]]) -> None:
        K = _CHUNK_K[4 if F > 2 else F]
        for i in range(0, len(items), K):
            part = items[i : i + K]
            rec = np.full(CHUNK_STRIDE, -1, dtype=np.int32)
            rec[0], rec[1] = (4 if F > 2 else F), len(part)
            rec[2:6] = (taps + [0] * 4)[:4]
            rec[6:10] = (slots + [slots[0]] * 4)[:4]
            rec[10:22] = 0
            for k, (d, dst) in enumerate(part):
                rec[10 + k] = d
                rec[22 + 4 * k : 22 + 4 * k + len(dst)] = dst
            chunks.append(rec)

    singles: list[tuple[int, int]] = []  # (group index, slot) of one-block groups
    for g, grp in enumerate(groups):
        F = int(grp[0])
        e0, e1, w16 = int(grp[7]), int(grp[8]), int(grp[9])
        if F == 1:
            singles.append((g, slot))
            slot += 1
            continue
        slots = [slot + f for f in range(F)]
        slot += F
        # Same-signature group: runs of entries with one tap.
        e = e0
        while e < e1:
            t = int(ents[e, 0])
            run = []
            while e < e1 and int(ents[e, 0]) == t:
                run.append((int(ents[e, 1]), [w16 + (e - e0) * F + f for f in range(F)]))
                e += 1
            emit(F, [t] * F, slots, run)
    # One-block groups, four at a time: pair their entries by (diagonal, rank of the tap).
    for i in range(0, len(singles), 4):
        part = singles[i : i + 4]
        by_key: dict[tuple[int, ...], list[tuple[int, list[int]]]] = {}
        per_d: list[dict[int, list[tuple[int, int]]]] = []
        for g, _ in part:
            grp = groups[g]
            e0, e1, w16 = int(grp[7]), int(grp[8]), int(grp[9])
            m: dict[int, list[tuple[int, int]]] = {}
            for e in range(e0, e1):
                m.setdefault(int(ents[e, 1]), []).append((int(ents[e, 0]), w16 + (e - e0)))
            per_d.append(m)
        all_d = sorted(set().union(*[set(m) for m in per_d]))
        for d in all_d:
            lists = [m.get(d, []) for m in per_d]
            for r in range(max(len(x) for x in lists)):
                taps = tuple(x[r][0] if r < len(x) else -1 for x in lists)
                dst = [x[r][1] if r < len(x) else -1 for x in lists]
                by_key.setdefault(taps, []).append((d, dst))
        slots = [s for _, s in part]
        for taps, items in by_key.items():
            emit(len(part), [max(t, 0) for t in taps], slots, items)
    if not chunks:
        return np.zeros((0, CHUNK_STRIDE), dtype=np.int32)
    return np.ascontiguousarray(np.stack(chunks))
