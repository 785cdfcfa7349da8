#!/usr/bin/python3
"""Writes tests/data/distill/: the distillation loss KL(teacher || student) and its gradients
with respect to the student's trained values, by torch autograd in float64, for
tests/test_distill.c.

Teacher: stories260K (models/stories260K.bin). Student: the same model with, in layer l, KV
group l % 4 removed (its k/v rows, query heads 2g and 2g+1, their o columns) and the MLP
channels c with (c + l) % 5 == 0 removed (rows of w1/w3, columns of w2), everything else kept
in order: what lmp_prune_layer_slice makes with those keep masks.

The forward is written here from the llama equations (RMSNorm eps 1e-5, interleaved RoPE,
grouped-query causal attention, SwiGLU), independent of lmpress; the loss follows
distill/distill.h:
  p = softmax(z_teacher / T), q = softmax(z_student / T)
  full:  L = mean over positions of T^2 sum_j p_j (log p_j - log q_j)
  top-k: K = the teacher's k largest logits, r = 1 - sum_K p, q_rest = 1 - sum_K q;
         L = mean of T^2 [sum_K p (log p - log q) + r (log r - log q_rest)]
The mean runs over every position of both sequences (each predicts a distribution).

Cases:
  full  full vocabulary, T = 1, every student tensor trained
  topk  top-10, T = 2, every student tensor trained
  lora  full, T = 1; every linear W of the student replaced by W + B A, rank 4, with
        A[k][j] = 0.05 sin(0.7 k + 0.3 j + 1.3 c), B[i][k] = 0.05 cos(0.5 i + 1.1 k + 0.7 c),
        c = 7 l + kind (kind 0..6: q, k, v, o, gate, up, down); gradients with respect to A,
        B and the norms

Files:
  tokens.npy       int32 (2, 40): BOS + calib.ids[100:139], BOS + calib.ids[7000:7039]
  loss_<case>.npy  float32 (1,)
  grads_<case>.npy float32, concatenated, each array flattened row-major ([out][in]) and
                   stored as flat[::STRIDE] when it has more than WHOLE_MAX values:
    full, topk: token_embd; per layer attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up,
                w_down; output_norm
    lora:       per layer, per kind q k v o gate up down: A then B; then per layer
                attn_norm, ffn_norm; then output_norm
Run: /usr/bin/python3 tests/gen_distill_fixture.py
"""
import os
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "data", "distill")
STRIDE, WHOLE_MAX = 17, 1024
RANK = 4


def load_llama2c(path):
    raw = open(path, "rb").read()
    D, F, L, H, K, V, S = struct.unpack("7i", raw[:28])
    assert V > 0, "stories260K ties its head to the embedding"
    hd = D // H
    w = np.frombuffer(raw, dtype=np.float32, offset=28)
    pos = 0

    def take(*shape):
        nonlocal pos
        n = int(np.prod(shape))
        a = w[pos:pos + n].reshape(shape)
        pos += n
        return a.astype(np.float64)

    p = {"emb": take(V, D), "attn_norm": take(L, D), "wq": take(L, H * hd, D),
         "wk": take(L, K * hd, D), "wv": take(L, K * hd, D), "wo": take(L, D, H * hd),
         "ffn_norm": take(L, D), "w1": take(L, F, D), "w2": take(L, D, F),
         "w3": take(L, F, D), "out_norm": take(D)}
    layers = []
    for l in range(L):
        layers.append({k: p[k][l] for k in ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm",
                                             "w1", "w2", "w3"]})
        layers[-1].update(H=H, K=K)
    return dict(D=D, hd=hd, V=V), p["emb"], layers, p["out_norm"]


def prune(cfg, layers):
    hd, out = cfg["hd"], []
    for l, Ly in enumerate(layers):
        H, K = Ly["H"], Ly["K"]
        g = l % K
        heads = [h for h in range(H) if h // (H // K) != g]
        kvs = [k for k in range(K) if k != g]
        qrows = [h * hd + i for h in heads for i in range(hd)]
        kvrows = [k * hd + i for k in kvs for i in range(hd)]
        ch = [c for c in range(Ly["w1"].shape[0]) if (c + l) % 5 != 0]
        out.append(dict(attn_norm=Ly["attn_norm"], wq=Ly["wq"][qrows], wk=Ly["wk"][kvrows],
                        wv=Ly["wv"][kvrows], wo=Ly["wo"][:, qrows], ffn_norm=Ly["ffn_norm"],
                        w1=Ly["w1"][ch], w3=Ly["w3"][ch], w2=Ly["w2"][:, ch],
                        H=len(heads), K=len(kvs)))
    return out


def rmsnorm(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, T, hd):  # x (B, T, heads, hd), interleaved pairs
    i = torch.arange(0, hd, 2, dtype=torch.float64)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * (10000.0 ** (-i / hd))[None, :]
    c, s = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return torch.stack([x0 * c - x1 * s, x0 * s + x1 * c], dim=-1).reshape(x.shape)


def forward(cfg, emb, layers, out_norm, tok, W=lambda l, name, w: w):
    B, T = tok.shape
    hd = cfg["hd"]
    h = emb[tok]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l, Ly in enumerate(layers):
        H, K = Ly["H"], Ly["K"]
        xn = rmsnorm(h, Ly["attn_norm"])
        q = (xn @ W(l, 0, Ly["wq"]).T).view(B, T, H, hd)
        k = (xn @ W(l, 1, Ly["wk"]).T).view(B, T, K, hd)
        v = (xn @ W(l, 2, Ly["wv"]).T).view(B, T, K, hd)
        q, k = rope(q, T, hd), rope(k, T, hd)
        k = k.repeat_interleave(H // K, dim=2)
        v = v.repeat_interleave(H // K, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + mask, dim=-1) @ v
        h = h + att.transpose(1, 2).reshape(B, T, H * hd) @ W(l, 3, Ly["wo"]).T
        xn = rmsnorm(h, Ly["ffn_norm"])
        a = torch.nn.functional.silu(xn @ W(l, 4, Ly["w1"]).T) * (xn @ W(l, 5, Ly["w3"]).T)
        h = h + a @ W(l, 6, Ly["w2"]).T
    return rmsnorm(h, out_norm) @ emb.T


def kl_loss(zt, zs, T, topk):
    lp = torch.log_softmax(zt / T, dim=-1)
    lq = torch.log_softmax(zs / T, dim=-1)
    if not topk:
        kl = (lp.exp() * (lp - lq)).sum(-1)
    else:
        idx = torch.topk(zt, topk, dim=-1).indices
        lpk, lqk = lp.gather(-1, idx), lq.gather(-1, idx)
        r = 1 - lpk.exp().sum(-1)
        qr = 1 - lqk.exp().sum(-1)
        kl = (lpk.exp() * (lpk - lqk)).sum(-1) + r * (torch.log(r) - torch.log(qr))
    return T * T * kl.mean()


def sample(parts):
    out = []
    for g in parts:
        f = g.detach().numpy().reshape(-1)
        out.append(f[::STRIDE] if f.size > WHOLE_MAX else f)
    return np.concatenate(out).astype(np.float32)


def main():
    cfg, emb, layers, out_norm = load_llama2c(os.path.join(ROOT, "models", "stories260K.bin"))
    ids = np.loadtxt(os.path.join(HERE, "data", "stories260K", "calib.ids"), dtype=np.int64)
    tok = np.stack([np.concatenate([[1], ids[100:139]]),
                    np.concatenate([[1], ids[7000:7039]])]).astype(np.int64)
    tt = torch.tensor(tok)
    t = lambda a: torch.tensor(a)
    with torch.no_grad():
        zt = forward(cfg, t(emb), [{k: (t(v) if isinstance(v, np.ndarray) else v)
                                     for k, v in Ly.items()} for Ly in layers], t(out_norm), tt)
    student = prune(cfg, layers)
    os.makedirs(OUT, exist_ok=True)
    np.save(os.path.join(OUT, "tokens.npy"), tok.astype(np.int32))
    names = ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w3", "w2"]
    for case, T, topk in [("full", 1.0, 0), ("topk", 2.0, 10), ("lora", 1.0, 0)]:
        E = torch.tensor(emb, requires_grad=True)
        N = torch.tensor(out_norm, requires_grad=True)
        S = [{k: (torch.tensor(v, requires_grad=True) if isinstance(v, np.ndarray) else v)
              for k, v in Ly.items()} for Ly in student]
        AB = {}
        W = lambda l, kind, w: w
        if case == "lora":
            for l, Ly in enumerate(S):
                for kind, nm in enumerate(["wq", "wk", "wv", "wo", "w1", "w3", "w2"]):
                    rows, cols = Ly[nm].shape
                    c = 7 * l + kind
                    k_ = np.arange(RANK)[:, None]
                    A = 0.05 * np.sin(0.7 * k_ + 0.3 * np.arange(cols)[None, :] + 1.3 * c)
                    B = 0.05 * np.cos(0.5 * np.arange(rows)[:, None] + 1.1 * k_.T + 0.7 * c)
                    AB[(l, kind)] = (torch.tensor(A, requires_grad=True),
                                     torch.tensor(B, requires_grad=True))
            W = lambda l, kind, w: w + AB[(l, kind)][1] @ AB[(l, kind)][0]
        zs = forward(cfg, E, S, N, tt, W)
        loss = kl_loss(zt, zs, T, topk)
        loss.backward()
        if case == "lora":
            parts = [g for l in range(len(S)) for kind in range(7)
                     for g in (AB[(l, kind)][0].grad, AB[(l, kind)][1].grad)]
            parts += [S[l][k].grad for l in range(len(S)) for k in ["attn_norm", "ffn_norm"]]
            parts.append(N.grad)
        else:
            parts = [E.grad] + [S[l][k].grad for l in range(len(S)) for k in names] + [N.grad]
        g = sample(parts)
        np.save(os.path.join(OUT, "loss_%s.npy" % case), np.array([loss.item()], np.float32))
        np.save(os.path.join(OUT, "grads_%s.npy" % case), g)
        print("%s: loss %.6f, %d gradient values" % (case, loss.item(), g.size))


if __name__ == "__main__":
    main()
