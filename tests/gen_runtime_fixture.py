#!/usr/bin/python3
"""Writes tests/data/rt_tiny/: a tiny random llama with per-layer head counts and MLP sizes,
q/k/v biases, an untied head and a non-default RoPE theta; logits from this file's own
numpy forward pass (float64), written from the llama equations, independent of lmpress; and
perplexity / KL-divergence values for eval/ computed here from the protocol definitions.

weights.npy: float32, every tensor flattened and concatenated in the order
  token_embd (V, D); per layer: attn_norm (D), wq (H*hd, D), bq (H*hd), wk (K*hd, D), bk,
  wv (K*hd, D), bv, wo (D, H*hd), ffn_norm (D), w_gate (F, D), w_up (F, D), w_down (D, F);
  output_norm (D), output (V, D).
tokens.npy: int32 (12,); logits.npy: float32 (12, V).
eval_ids.npy: int32 (200,) ids in [2, V) (the stream gets BOS = 1 in front).
eval_expected.npy: float32, see EXPECTED below; the "perturbed" model is this one with
  blk.0.attn_q.weight * 0.75 and blk.1.ffn_down.weight * 0.5 (float32 products).
Run: /usr/bin/python3 tests/gen_runtime_fixture.py
"""
import os
import numpy as np

D, HD, V, THETA, EPS = 24, 4, 40, 500.0, 1e-6
LAYERS = [(6, 2, 20), (4, 4, 13)]  # (n_heads, n_kv_heads, ffn)
T = 12
BOS, CTX, N_IDS = 1, 8, 200
# eval_expected.npy, 20 values: base model, BOS + eval_ids, ctx CTX:
#   [0:3] llamacpp protocol: PPL, tokens scored, PPL error (llama.cpp's formula)
#   [3:6] gptq protocol: the same
#   [6:13] perturbed vs base, llamacpp protocol, base distributions kept whole (top-k = V):
#          PPL, PPL(base), mean KL(base || perturbed), median, 99th percentile, max, top-1
#          agreement
#   [13:20] the same with the base's top 5 kept and the rest of its mass in one bucket

rng = np.random.default_rng(1234)
def rnd(*shape, s=0.3):
    return (rng.standard_normal(shape) * s).astype(np.float32)

tensors = []
emb = rnd(V, D, s=1.0); tensors.append(emb)
layers = []
for (H, K, F) in LAYERS:
    L = dict(attn_norm=(1 + rnd(D, s=0.1)), wq=rnd(H * HD, D), bq=rnd(H * HD, s=0.1),
             wk=rnd(K * HD, D), bk=rnd(K * HD, s=0.1), wv=rnd(K * HD, D), bv=rnd(K * HD, s=0.1),
             wo=rnd(D, H * HD), ffn_norm=(1 + rnd(D, s=0.1)), w_gate=rnd(F, D), w_up=rnd(F, D),
             w_down=rnd(D, F))
    for k in ["attn_norm", "wq", "bq", "wk", "bk", "wv", "bv", "wo", "ffn_norm", "w_gate",
              "w_up", "w_down"]:
        tensors.append(L[k])
    layers.append(L)
out_norm = 1 + rnd(D, s=0.1); tensors.append(out_norm)
out = rnd(V, D); tensors.append(out)
tokens = rng.integers(0, V, size=T).astype(np.int32)
eval_ids = rng.integers(2, V, size=N_IDS).astype(np.int32)

def rmsnorm(x, w):
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + EPS) * w

def rope(x, n_heads):  # x (n, n_heads*HD); rotate pairs (2i, 2i+1) as complex numbers
    n = x.shape[0]
    x = x.reshape(n, n_heads, HD // 2, 2)
    z = x[..., 0] + 1j * x[..., 1]
    freqs = THETA ** (-np.arange(0, HD, 2) / HD)
    ang = np.outer(np.arange(n), freqs)  # (n, HD/2)
    z = z * np.exp(1j * ang)[:, None, :]
    return np.stack([z.real, z.imag], -1).reshape(n, n_heads * HD)

def forward(layers, toks):
    f = lambda a: a.astype(np.float64)
    n = len(toks)
    h = f(emb)[toks]
    mask = np.tril(np.ones((n, n), dtype=bool))
    for (H, K, F), L in zip(LAYERS, layers):
        x = rmsnorm(h, f(L["attn_norm"]))
        q = rope(x @ f(L["wq"]).T + f(L["bq"]), H).reshape(n, H, HD)
        k = rope(x @ f(L["wk"]).T + f(L["bk"]), K).reshape(n, K, HD)
        v = (x @ f(L["wv"]).T + f(L["bv"])).reshape(n, K, HD)
        o = np.zeros((n, H, HD))
        for hh in range(H):
            kh = hh // (H // K)
            s = q[:, hh, :] @ k[:, kh, :].T / np.sqrt(HD)
            s = np.where(mask, s, -np.inf)
            p = np.exp(s - s.max(-1, keepdims=True)); p /= p.sum(-1, keepdims=True)
            o[:, hh, :] = p @ v[:, kh, :]
        h = h + o.reshape(n, H * HD) @ f(L["wo"]).T
        x = rmsnorm(h, f(L["ffn_norm"]))
        g = x @ f(L["w_gate"]).T
        u = x @ f(L["w_up"]).T
        h = h + (g / (1 + np.exp(-g)) * u) @ f(L["w_down"]).T
    return rmsnorm(h, f(out_norm)) @ f(out).T

logits = forward(layers, tokens)

def log_softmax(l):
    m = l.max(-1, keepdims=True)
    return l - m - np.log(np.exp(l - m).sum(-1, keepdims=True))

def scored(layers, protocol):
    """log-probs (positions, V) and target ids of every scored position"""
    stream = np.concatenate([[BOS], eval_ids])
    lps, tg = [], []
    for c in range(len(stream) // CTX):
        ch = stream[c * CTX:(c + 1) * CTX].copy()
        if protocol == "llamacpp":
            ch[0] = BOS
        first = CTX // 2 if protocol == "llamacpp" else 0
        lp = log_softmax(forward(layers, ch))
        for j in range(first, CTX - 1):
            lps.append(lp[j]); tg.append(ch[j + 1])
    return np.array(lps), np.array(tg)

def ppl_stats(lp, tg):
    nll = -lp[np.arange(len(tg)), tg]
    n = len(nll); m = nll.mean()
    ppl = np.exp(m)
    return ppl, n, ppl * np.sqrt((np.mean(nll ** 2) - m * m) / (n - 1))

def kl_stats(lq, lb, tg, k):
    n = len(tg)
    kl = np.zeros(n)
    for i in range(n):
        order = np.argsort(-lb[i], kind="stable")
        top, rest = order[:k], order[k:]
        pb = np.exp(lb[i])
        kl[i] = np.sum(pb[top] * (lb[i][top] - lq[i][top]))
        if len(rest):
            pr, qr = pb[rest].sum(), np.exp(lq[i][rest]).sum()
            kl[i] += pr * (np.log(pr) - np.log(qr))
    kl32 = np.sort(kl.astype(np.float32)).astype(np.float64)
    nll_q = -lq[np.arange(n), tg]; nll_b = -lb[np.arange(n), tg]
    top1 = np.mean(np.argmax(lq, 1) == np.argmax(lb, 1))
    return [np.exp(nll_q.mean()), np.exp(nll_b.mean()), kl.mean(), np.median(kl32),
            np.percentile(kl32, 99), kl32[-1], top1]

pert = [dict(L) for L in layers]
pert[0]["wq"] = layers[0]["wq"] * np.float32(0.75)
pert[1]["w_down"] = layers[1]["w_down"] * np.float32(0.5)

exp = []
lb, tg = scored(layers, "llamacpp")
exp += list(ppl_stats(lb, tg))
exp += list(ppl_stats(*scored(layers, "gptq")))
lq, tg2 = scored(pert, "llamacpp")
assert (tg == tg2).all()
exp += kl_stats(lq, lb, tg, V)
exp += kl_stats(lq, lb, tg, 5)
assert len(exp) == 20

d = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "rt_tiny")
os.makedirs(d, exist_ok=True)
np.save(os.path.join(d, "weights.npy"), np.concatenate([t.ravel() for t in tensors]))
np.save(os.path.join(d, "tokens.npy"), tokens)
np.save(os.path.join(d, "logits.npy"), logits.astype(np.float32))
np.save(os.path.join(d, "eval_ids.npy"), eval_ids)
np.save(os.path.join(d, "eval_expected.npy"), np.array(exp, dtype=np.float32))
print("wrote", d, sum(t.size for t in tensors), "weights;", len(exp), "expected values:")
print(np.array(exp))
