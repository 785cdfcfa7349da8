#!/usr/bin/python3
"""Independent references for a real byte-level-BPE llama model in GGUF (SmolLM2-135M;
tests/test_smollm2.c). Nothing here shares code with lmpress.

  check_smollm2.py --tokenizer FILE.gguf TEXT_FILE IDS_FILE

builds a Hugging Face `tokenizers` tokenizer from the vocabulary and merges stored in the
GGUF (read with the `gguf` package): BPE over GPT-2 byte-level symbols, SmolLM2's
pre-tokenizer (each digit split off, then the GPT-2 byte-level regex: what the model's
original tokenizer.json declares), control tokens as special added tokens. Encodes
TEXT_FILE (no BOS: the file says add_bos_token false) and compares with IDS_FILE (lmpress's
ids, whitespace separated); then decodes lmpress's ids and compares with the text.

  check_smollm2.py --forward FILE.gguf TOKENS_FILE OUT.npy

writes the logits [n, vocab] (float32) of a numpy float64 llama forward pass over the
tokens: weights dequantized by gguf.quants.dequantize, RMSNorm, RoPE on adjacent pairs
(rotation of (x[2i], x[2i+1]) by pos * base^(-2i/head_dim), the order GGUF llama Q/K rows
are stored in), grouped-query causal attention, SwiGLU MLP, tied or separate head."""
import sys

import numpy as np

try:
    import gguf
except ImportError as e:
    print("gguf package missing: %s" % e)
    sys.exit(3)


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def field(r, key, default=None):
    f = r.fields.get(key)
    return default if f is None else f.contents()


def strings(r, key):
    f = r.fields[key]
    return [bytes(f.parts[i]).decode("utf-8") for i in f.data]


def check_tokenizer(path, text_file, ids_file):
    try:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    except ImportError as e:
        print("tokenizers package missing: %s" % e)
        sys.exit(3)
    r = gguf.GGUFReader(path)
    if field(r, "tokenizer.ggml.model") != "gpt2":
        fail("%s: not a byte-level BPE vocabulary" % path)
    pre = field(r, "tokenizer.ggml.pre")
    if pre != "smollm":
        fail("%s: pre-tokenizer %r; this reference builds SmolLM2's (smollm)" % (path, pre))
    tokens = strings(r, "tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ")) for m in strings(r, "tokenizer.ggml.merges")]
    types = [int(x) for x in field(r, "tokenizer.ggml.token_type")]
    tk = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    tk.decoder = decoders.ByteLevel()
    special = [tokens[i] for i, t in enumerate(types) if t == 3]  # CONTROL
    tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in special])
    with open(text_file, encoding="utf-8", newline="") as f:
        text = f.read()
    got = tk.encode(text, add_special_tokens=False).ids
    want = [int(x) for x in open(ids_file).read().split()]
    if got != want:
        k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), min(len(got), len(want)))
        fail("%s: tokenizers gives %d ids, lmpress %d; first difference at %d: %s vs %s (text %r)" % (
            path, len(got), len(want), k, got[k:k + 5], want[k:k + 5],
            tk.decode(got[max(0, k - 3):k + 3], skip_special_tokens=False)))
    back = tk.decode(want, skip_special_tokens=False)
    if back != text:
        fail("%s: lmpress's ids decode to a different text" % path)
    print("ok %s: tokenizers (vocabulary and merges from the GGUF) gives lmpress's %d ids for "
          "%d characters, and they decode back to the text" % (path.split("/")[-1], len(got), len(text)))


def forward(path, tokens_file, out_file):
    r = gguf.GGUFReader(path)
    arch = field(r, "general.architecture")
    if arch != "llama":
        fail("%s: architecture %s" % (path, arch))

    def a(k):
        return field(r, arch + "." + k)

    L, H, KV = int(a("block_count")), int(a("attention.head_count")), int(a("attention.head_count_kv"))
    D = int(a("embedding_length"))
    hd = D // H
    eps = float(a("attention.layer_norm_rms_epsilon"))
    base = float(a("rope.freq_base") or 10000.0)
    W = {}
    for t in r.tensors:
        x = gguf.quants.dequantize(t.data, t.tensor_type)
        W[t.name] = x.reshape([int(n) for n in reversed(t.shape)]).astype(np.float64)
    toks = np.array([int(x) for x in open(tokens_file).read().split()])
    n = len(toks)

    def rms(x, w):
        return x / np.sqrt((x * x).mean(axis=-1, keepdims=True) + eps) * w

    inv = base ** (-np.arange(0, hd, 2, dtype=np.float64) / hd)  # (hd/2)
    ang = np.arange(n, dtype=np.float64)[:, None] * inv[None, :]  # (n, hd/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def rope(x, heads):  # (n, heads*hd), pairs (2i, 2i+1)
        x = x.reshape(n, heads, hd // 2, 2)
        x0, x1 = x[..., 0], x[..., 1]
        c, s = cos[:, None, :], sin[:, None, :]
        return np.stack([x0 * c - x1 * s, x0 * s + x1 * c], axis=-1).reshape(n, heads * hd)

    x = W["token_embd.weight"][toks]
    mask = np.triu(np.full((n, n), -np.inf), 1)
    for l in range(L):
        p = "blk.%d." % l
        h = rms(x, W[p + "attn_norm.weight"])
        q = rope(h @ W[p + "attn_q.weight"].T, H).reshape(n, H, hd)
        k = rope(h @ W[p + "attn_k.weight"].T, KV).reshape(n, KV, hd)
        v = (h @ W[p + "attn_v.weight"].T).reshape(n, KV, hd)
        o = np.empty((n, H, hd))
        for i in range(H):
            j = i // (H // KV)
            s = q[:, i, :] @ k[:, j, :].T / np.sqrt(hd) + mask
            s = np.exp(s - s.max(axis=1, keepdims=True))
            o[:, i, :] = (s / s.sum(axis=1, keepdims=True)) @ v[:, j, :]
        x = x + o.reshape(n, D) @ W[p + "attn_output.weight"].T
        h = rms(x, W[p + "ffn_norm.weight"])
        g = h @ W[p + "ffn_gate.weight"].T
        u = h @ W[p + "ffn_up.weight"].T
        x = x + (g / (1.0 + np.exp(-g)) * u) @ W[p + "ffn_down.weight"].T
    x = rms(x, W["output_norm.weight"])
    head = W.get("output.weight", W["token_embd.weight"])
    np.save(out_file, (x @ head.T).astype(np.float32))
    print("ok %s: numpy forward over %d tokens written to %s" % (path.split("/")[-1], n, out_file))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--tokenizer":
        check_tokenizer(*sys.argv[2:])
    elif len(sys.argv) == 5 and sys.argv[1] == "--forward":
        forward(*sys.argv[2:])
    else:
        print(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
