#!/usr/bin/python3
"""Writes tests/data/backward/: gradients of the next-token cross entropy of stories260K with
respect to every weight, by torch autograd in float64, for tests/test_backward.c.

The model is read from models/stories260K.bin here (llama2.c legacy format: 7 int32 header
dim, hidden, n_layers, n_heads, n_kv_heads, vocab, seq_len; then token embedding, per-layer
attention norms, wq, wk, wv, wo, ffn norms, w1 (gate), w2 (down), w3 (up), final norm; the
head is tied to the embedding when vocab > 0) and the forward is written from the llama
equations, independent of lmpress: RMSNorm (eps 1e-5), RoPE on interleaved pairs (2i, 2i+1)
with angle pos * 10000^(-2i/hd) as llama2.c trains it, grouped-query causal attention,
SwiGLU MLP.

Loss: the mean over both sequences and all positions t < T-1 of -log p(tokens[t+1] | ..t).

tokens.npy  int32 (2, 96): BOS + calib.ids[0:95], and calib.ids[5000:5096]
loss.npy    float32 (1,)
grads.npy   float32: the gradient of every tensor, flattened row-major ([out][in]), in the
            order token_embd; per layer attn_norm, wq, wk, wv, wo, ffn_norm, w_gate, w_up,
            w_down; output_norm. A tensor of more than 8192 values is stored as flat[::5]
            (every fifth value), others whole.
Run: /usr/bin/python3 tests/gen_backward_fixture.py
"""
import os
import struct

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(HERE, "data", "backward")
STRIDE, WHOLE_MAX = 5, 8192


def load_llama2c(path):
    raw = open(path, "rb").read()
    D, F, L, H, K, V, S = struct.unpack("7i", raw[:28])
    tied = V > 0
    V = abs(V)
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
    pos += S * hd  # freq_cis_real, freq_cis_imag (S * hd/2 each), unused
    assert tied, "stories260K ties its head to the embedding"
    cfg = dict(D=D, F=F, L=L, H=H, K=K, V=V, hd=hd)
    return cfg, p


def rmsnorm(x, w):
    return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w


def rope(x, T, hd):  # x (B, T, n_heads, hd), interleaved pairs
    i = torch.arange(0, hd, 2, dtype=torch.float64)
    freq = 10000.0 ** (-i / hd)
    ang = torch.arange(T, dtype=torch.float64)[:, None] * freq[None, :]  # (T, hd/2)
    c, s = torch.cos(ang)[None, :, None, :], torch.sin(ang)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    y0 = x0 * c - x1 * s
    y1 = x0 * s + x1 * c
    return torch.stack([y0, y1], dim=-1).reshape(x.shape)


def forward(cfg, P, tok):
    B, T = tok.shape
    D, H, K, hd = cfg["D"], cfg["H"], cfg["K"], cfg["hd"]
    h = P["emb"][tok]
    mask = torch.full((T, T), float("-inf"), dtype=torch.float64).triu(1)
    for l in range(cfg["L"]):
        xn = rmsnorm(h, P["attn_norm"][l])
        q = (xn @ P["wq"][l].T).view(B, T, H, hd)
        k = (xn @ P["wk"][l].T).view(B, T, K, hd)
        v = (xn @ P["wv"][l].T).view(B, T, K, hd)
        q, k = rope(q, T, hd), rope(k, T, hd)
        rep = H // K
        k = k.repeat_interleave(rep, dim=2)
        v = v.repeat_interleave(rep, dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
        att = torch.softmax(q @ k.transpose(-1, -2) / hd ** 0.5 + mask, dim=-1) @ v
        att = att.transpose(1, 2).reshape(B, T, H * hd)
        h = h + att @ P["wo"][l].T
        xn = rmsnorm(h, P["ffn_norm"][l])
        a = torch.nn.functional.silu(xn @ P["w1"][l].T) * (xn @ P["w3"][l].T)
        h = h + a @ P["w2"][l].T
    return rmsnorm(h, P["out_norm"]) @ P["emb"].T


def main():
    cfg, p = load_llama2c(os.path.join(ROOT, "models", "stories260K.bin"))
    ids = np.loadtxt(os.path.join(HERE, "data", "stories260K", "calib.ids"), dtype=np.int64)
    tok = np.stack([np.concatenate([[1], ids[0:95]]), ids[5000:5096]]).astype(np.int64)
    P = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    logits = forward(cfg, P, torch.tensor(tok))
    B, T, V = logits.shape
    lp = torch.log_softmax(logits[:, :-1], dim=-1)
    y = torch.tensor(tok[:, 1:])
    loss = -lp.gather(-1, y[..., None]).mean()
    loss.backward()

    parts = [P["emb"].grad]
    for l in range(cfg["L"]):
        for k in ["attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w3", "w2"]:
            parts.append(P[k].grad[l])
    parts.append(P["out_norm"].grad)
    out = []
    for g in parts:
        f = g.detach().numpy().reshape(-1)
        out.append(f[::STRIDE] if f.size > WHOLE_MAX else f)
    grads = np.concatenate(out).astype(np.float32)
    os.makedirs(OUT, exist_ok=True)
    np.save(os.path.join(OUT, "tokens.npy"), tok.astype(np.int32))
    np.save(os.path.join(OUT, "loss.npy"), np.array([loss.item()], dtype=np.float32))
    np.save(os.path.join(OUT, "grads.npy"), grads)
    print("loss %.6f, %d gradient values" % (loss.item(), grads.size))


if __name__ == "__main__":
    main()
