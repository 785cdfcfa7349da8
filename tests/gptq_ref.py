#!/usr/bin/python3
"""Independent numpy reference for tests/test_quant.c (run by the test itself, needs numpy).

  - grid(): the quantization grid of the reference Quantizer.find_params (IST-DASLab gptq,
    quant.py), with the scale rounded to fp16 before any code is computed, in float32 like
    torch does; the conventions are the ones stated in quantize/quant.h.
  - gptq(): GPTQ written from the paper (Frantar et al. 2022, Algorithm 1) in float64, one
    column at a time with the full update of all later columns (no lazy batching, no
    blocks), H^-1 by np.linalg.inv and its upper Cholesky factor by np.linalg.cholesky.

Groups need not divide cols: they start at every multiple of `group` (in storage order:
processing order with act-order, natural order with static groups), n_groups =
ceil(cols / group), and the last group's params come from its shorter slice, as the
reference's find_params(W[:, i:i + groupsize]) at each i % groupsize == 0.

Usage: gptq_ref.py DIR
  reads  DIR/W.f32 (rows*cols float32), DIR/H.f32 (cols*cols float32, symmetric),
         DIR/cases.txt: "rows cols" on the first line, then one case per line:
         name kind bits group sym mse act_order static quirks block damp   (kind gptq|rtn)
  writes DIR/<name>.codes.npy (int32, rows x cols, storage order), .scales.npy and
         .zeros.npy (float32 values of the fp16 params, rows x n_groups), .perm.npy (int32,
         only when the perm is stored), .fragile.npy (int32, rows x cols, storage order: 1
         where float32-vs-float64 rounding may legitimately flip a code: w/scale within 1e-3
         of a .5 boundary, or the group's params near an fp16 / zero rounding boundary or an
         MSE near-tie).
"""
import sys

import numpy as np

F = np.float32


def grid(x, bits, sym, mse, quirks, grid_n=100, maxshrink=0.8, norm=2.4):
    """returns (scale as float32 holding an fp16 value, zero float32, fragile)"""
    x = np.asarray(x, dtype=F)
    maxq = 2**bits - 1
    xmin = min(F(x.min()), F(0))
    xmax = max(F(x.max()), F(0))
    if sym:
        xmax = max(F(-xmin), xmax)
        if xmin < 0 or not quirks:
            xmin = F(-xmax)
    if xmin == 0 and xmax == 0:
        xmin, xmax = F(-1), F(1)

    def point(lo, hi):
        s = F(F(hi - lo) / F(maxq))
        if not s >= F(2.0**-24):
            s = F(2.0**-24)
        t = F(F(-lo) / s)
        if sym:
            z = F((maxq + 1) // 2)
        else:
            z = F(min(max(np.round(t), F(0)), F(maxq)))
        frag = (not sym) and abs(float(t) - np.floor(float(t)) - 0.5) < 1e-4
        frag = frag or np.float16(s * F(1 + 1e-5)) != np.float16(s * F(1 - 1e-5))
        return s, z, frag

    s, z, frag = point(xmin, xmax)
    sh = np.float16(s)
    if not np.isfinite(sh):
        raise ValueError("scale overflows fp16")
    if not mse:
        return F(sh), z, frag
    errs = []
    for i in range(int(maxshrink * grid_n)):
        p = F(1 - i / grid_n)
        s1, z1, f1 = point(F(p * xmin), F(p * xmax))
        sf = F(np.float16(s1))
        q = np.clip(np.round(x / sf) + z1, 0, maxq).astype(F)
        d = np.abs(F(sf) * (q - z1) - x).astype(F)
        e = np.power(d.astype(np.float64), np.float64(F(norm))).astype(F).astype(np.float64).sum()
        errs.append((e, sf, z1, f1))
    best = min(range(len(errs)), key=lambda k: (errs[k][0], k))
    e0, sf, z1, f1 = errs[best]
    near = [c for c in errs if (c[1], c[2]) != (sf, z1) and c[0] - e0 <= 1e-5 * max(e0, 1e-30)]
    return sf, z1, f1 or bool(near)


def rtn(W, bits, group, sym, mse, quirks):
    rows, cols = W.shape
    ng = -(-cols // group)  # ceil: the last group covers the remaining cols % group columns
    S = np.zeros((rows, ng), F)
    Z = np.zeros((rows, ng), F)
    Q = np.zeros((rows, cols), np.int32)
    Fg = np.zeros((rows, cols), np.int32)
    for r in range(rows):
        for g in range(ng):
            x = W[r, g * group:(g + 1) * group].astype(F)
            s, z, fr = grid(x, bits, sym, mse, quirks)
            S[r, g], Z[r, g] = s, z
            Q[r, g * group:(g + 1) * group] = np.clip(np.round(x / s) + z, 0, 2**bits - 1)
            Fg[r, g * group:(g + 1) * group] = fr
    return Q, S, Z, None, Fg


def gptq(W, H, bits, group, sym, mse, act_order, static, quirks, block, damp):
    W = W.astype(np.float64)
    H = H.astype(np.float64)
    W_orig = W.copy()
    rows, cols = W.shape
    ng = -(-cols // group)  # ceil; slices below are naturally shorter at the end
    maxq = 2**bits - 1
    dead = np.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    S = np.zeros((rows, ng), F)
    Z = np.zeros((rows, ng), F)
    Fr = np.zeros((rows, ng), bool)
    fixed = static or (quirks and group == cols)
    if fixed:
        src = W if static else W_orig
        for r in range(rows):
            for g in range(ng):
                S[r, g], Z[r, g], Fr[r, g] = grid(src[r, g * group:(g + 1) * group], bits, sym,
                                                  mse, quirks)
    perm = np.argsort(-np.diag(H), kind="stable") if act_order else np.arange(cols)
    W = W[:, perm]
    H = H[perm][:, perm]
    H[np.diag_indices(cols)] += damp * np.mean(np.diag(H))
    U = np.linalg.cholesky(np.linalg.inv(H)).T  # H^-1 = U^T U, U upper
    store_perm = act_order and not static
    Q = np.zeros((rows, cols), np.int32)
    frag = np.zeros((rows, cols), bool)
    snap = W
    for j in range(cols):
        if quirks and j % block == 0:
            snap = W.copy()  # the reference reads W, updated only at block ends
        gi = perm[j] // group if static else j // group
        if not fixed and j % group == 0:
            src = snap if quirks else W
            for r in range(rows):
                S[r, gi], Z[r, gi], Fr[r, gi] = grid(src[r, j:j + group], bits, sym, mse, quirks)
        s = S[:, gi].astype(np.float64)
        z = Z[:, gi].astype(np.float64)
        t = W[:, j] / s
        q = np.clip(np.round(t) + z, 0, maxq)
        wq = s * (q - z)
        err = (W[:, j] - wq) / U[j, j]
        W[:, j + 1:] -= np.outer(err, U[j, j + 1:])
        sc = j if store_perm else perm[j]
        Q[:, sc] = q
        frag[:, sc] = (np.abs(t - np.floor(t) - 0.5) < 1e-3) | Fr[:, gi]
    return Q, S, Z, (perm.astype(np.int32) if store_perm else None), frag.astype(np.int32)


def main():
    d = sys.argv[1]
    lines = [l.split() for l in open(d + "/cases.txt") if l.strip()]
    rows, cols = int(lines[0][0]), int(lines[0][1])
    W = np.fromfile(d + "/W.f32", dtype=F).reshape(rows, cols)
    kinds = {c[1] for c in lines[1:]}
    H = np.fromfile(d + "/H.f32", dtype=F).reshape(cols, cols) if "gptq" in kinds else None
    for c in lines[1:]:
        name, kind = c[0], c[1]
        bits, group, sym, mse, act, static, quirks, block = map(int, c[2:10])
        damp = float(c[10])
        group = min(group or cols, cols)
        if kind == "rtn":
            res = rtn(W, bits, group, sym, mse, quirks)
        else:
            res = gptq(W, H, bits, group, sym, mse, act, static, quirks, block, damp)
        Q, S, Z, P, Fg = res
        np.save(f"{d}/{name}.codes.npy", Q.astype(np.int32))
        np.save(f"{d}/{name}.scales.npy", S.astype(F))
        np.save(f"{d}/{name}.zeros.npy", Z.astype(F))
        np.save(f"{d}/{name}.fragile.npy", Fg.astype(np.int32))
        if P is not None:
            np.save(f"{d}/{name}.perm.npy", P)
    print("ok", len(lines) - 1, "cases")


if __name__ == "__main__":
    main()
