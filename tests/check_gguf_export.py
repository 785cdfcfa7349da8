#!/usr/bin/env python3
"""Independent check of lmpress's GGUF export (tests/test_export.c) with the reference
reader: the PyPI package `gguf` (ggml's own gguf-py) and numpy.

  check_gguf_export.py CASE [CASE ...]      CASE = FILE.gguf:EXPECT_DIR[:src=DIR][:ours=DIR]

For every case:
  - gguf.GGUFReader opens the file (header, metadata, tensor infos, alignment);
  - the architecture is "llama", or "deci" (llama.cpp's Llama with per-layer shapes) exactly
    when the layers differ, and its metadata agrees with the tensor shapes: token_embd is {dim, vocab}, the
    tokenizer has vocab tokens, and each block's q/k/v/o and MLP shapes follow its head
    counts and feed_forward_length (scalars, or per-layer INT32 arrays for pruned models),
    head size attention.key_length == rope.dimension_count; data offsets are aligned;
  - every tensor dequantized by gguf.quants.dequantize equals EXPECT_DIR/<name>.npy (float32,
    lmpress's [out][in] layout) exactly;
  - with src=DIR (float sources): for each tensor whose DIR/<name>.npy exists and whose type
    is F16/BF16/Q8_0/Q4_0/Q4_1, gguf.quants.quantize of the source gives the very bytes
    lmpress wrote (the quantizers agree bit for bit with ggml's reference);
  - with ours=DIR (packed sources: DIR holds lmpress's dequantized weights): prints, over the
    tensors of DIR, the largest |gguf value - lmpress weight| and how many 32-element blocks
    reproduce lmpress's weights exactly ("maxerr=E exact_blocks=A/B").
Prints one line per case; exits 1 with the first mismatch.

  check_gguf_export.py --llama-cpp FILE.gguf TEXT_FILE IDS_FILE [TOKENS_FILE LOGITS.npy TOL]

(needs llama-cpp-python; exit 3 without it) loads FILE.gguf in llama.cpp: its tokenization of
TEXT_FILE (with BOS as the file says) must equal IDS_FILE (lmpress's ids, spaces), and with
TOKENS_FILE its logits for those tokens must be within TOL of LOGITS.npy (lmpress's runtime,
float32 [n, vocab])."""
import os
import sys

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as Q
except ImportError as e:  # the C test checks for the package before calling
    print("gguf package missing: %s" % e)
    sys.exit(3)


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def field(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    return f.contents()


def per_layer(r, key, n):
    v = field(r, key)
    if v is None:
        fail("missing " + key)
    if isinstance(v, list):
        f = r.fields[key]
        if len(v) != n:
            fail("%s has %d values for %d layers" % (key, len(v), n))
        if f.types[-1] != gguf.GGUFValueType.INT32:
            fail("%s: per-layer array of %s, llama.cpp reads INT32" % (key, f.types[-1].name))
        return [int(x) for x in v]
    return [int(v)] * n


def check_meta(path, r):
    arch = field(r, "general.architecture")
    if arch not in ("llama", "deci"):
        fail(path + ": architecture %r is not llama or deci" % arch)
    align = int(field(r, "general.alignment", 32))
    for t in r.tensors:
        if t.data_offset % align:
            fail("%s: tensor %s at offset %d, alignment %d" % (path, t.name, t.data_offset, align))
    L = int(field(r, arch + ".block_count"))
    D = int(field(r, arch + ".embedding_length"))
    hd = int(field(r, arch + ".attention.key_length"))
    if int(field(r, arch + ".rope.dimension_count")) != hd:
        fail(path + ": rope.dimension_count != key_length")
    heads = per_layer(r, arch + ".attention.head_count", L)
    kv = per_layer(r, arch + ".attention.head_count_kv", L)
    ffn = per_layer(r, arch + ".feed_forward_length", L)
    uniform = len(set(heads)) == 1 and len(set(kv)) == 1 and len(set(ffn)) == 1
    if uniform != (arch == "llama"):
        fail("%s: architecture %s with %s layer shapes" % (path, arch, "uniform" if uniform else "per-layer"))
    tokens = r.fields["tokenizer.ggml.tokens"]
    n_tok = len(tokens.data)
    model = field(r, "tokenizer.ggml.model")
    if model == "llama" and len(r.fields["tokenizer.ggml.scores"].data) != n_tok:
        fail(path + ": scores and tokens differ in length")
    if model == "gpt2" and "tokenizer.ggml.merges" not in r.fields:
        fail(path + ": gpt2 tokenizer without merges")
    shapes = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    V = int(field(r, arch + ".vocab_size", n_tok))
    want = {"token_embd.weight": [D, V], "output_norm.weight": [D]}
    if "output.weight" in shapes:
        want["output.weight"] = [D, V]
    for l in range(L):
        q, k, f = heads[l] * hd, kv[l] * hd, ffn[l]
        p = "blk.%d." % l
        want.update({p + "attn_norm.weight": [D], p + "ffn_norm.weight": [D],
                     p + "attn_q.weight": [D, q], p + "attn_k.weight": [D, k],
                     p + "attn_v.weight": [D, k], p + "attn_output.weight": [q, D],
                     p + "ffn_gate.weight": [D, f], p + "ffn_up.weight": [D, f],
                     p + "ffn_down.weight": [f, D]})
        for b, n in (("attn_q.bias", q), ("attn_k.bias", k), ("attn_v.bias", k)):
            if p + b in shapes:
                want[p + b] = [n]
    if V != n_tok:
        fail("%s: vocab_size %d but %d tokens" % (path, V, n_tok))
    for name, shape in want.items():
        if shapes.get(name) != shape:
            fail("%s: tensor %s has ne %s, metadata implies %s" % (path, name, shapes.get(name), shape))
    extra = set(shapes) - set(want)
    if extra:
        fail("%s: unexpected tensors %s" % (path, sorted(extra)[:3]))
    return heads, kv, ffn


def check_case(case):
    parts = case.split(":")
    path, exp_dir = parts[0], parts[1]
    opt = dict(p.split("=", 1) for p in parts[2:])
    src_dir, ours_dir = opt.get("src"), opt.get("ours")
    max_err, n_blocks, n_exact = 0.0, 0, 0
    r = gguf.GGUFReader(path)
    heads, kv, ffn = check_meta(path, r)
    types = {}
    n_src = 0
    for t in r.tensors:
        deq = gguf.quants.dequantize(t.data, t.tensor_type)
        exp = np.load(os.path.join(exp_dir, t.name + ".npy"))
        if deq.size != exp.size:
            fail("%s: %s has %d values, expected %d" % (path, t.name, deq.size, exp.size))
        deq = deq.reshape(exp.shape).astype(np.float32)
        if not np.array_equal(deq, exp):
            bad = np.argwhere(deq != exp)[0]
            fail("%s: %s (%s) differs at %s: gguf %r, lmpress %r" % (
                path, t.name, t.tensor_type.name, tuple(bad), deq[tuple(bad)], exp[tuple(bad)]))
        types[t.tensor_type.name] = types.get(t.tensor_type.name, 0) + 1
        op = os.path.join(ours_dir, t.name + ".npy") if ours_dir else None
        if op and os.path.exists(op) and deq.ndim == 2:
            ours = np.load(op)
            d = np.abs(deq.astype(np.float64) - ours.astype(np.float64))
            max_err = max(max_err, float(d.max()))
            if deq.shape[1] % 32 == 0:
                blocks = (d.reshape(deq.shape[0], -1, 32) == 0).all(axis=2)
                n_blocks += blocks.size
                n_exact += int(blocks.sum())
        sp = os.path.join(src_dir, t.name + ".npy") if src_dir else None
        if sp and os.path.exists(sp) and t.tensor_type in (Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1):
            src = np.load(sp).astype(np.float32)
            ref = gguf.quants.quantize(src, t.tensor_type)
            if not np.array_equal(ref.view(np.uint8).reshape(-1), t.data.view(np.uint8).reshape(-1)):
                fail("%s: %s: bytes differ from gguf.quants.quantize (%s)" % (
                    path, t.name, t.tensor_type.name))
            n_src += 1
    per = "uniform" if len(set(heads)) == 1 and len(set(ffn)) == 1 else "per-layer"
    print("ok %s: %d tensors %s, %s layer shapes, %d re-quantized by gguf-py identically" % (
        os.path.basename(path), len(r.tensors),
        " ".join("%s=%d" % kv_ for kv_ in sorted(types.items())), per, n_src))
    if ours_dir:
        print("  %s against lmpress's weights: maxerr=%.9g exact_blocks=%d/%d" % (
            os.path.basename(path), max_err, n_exact, n_blocks))


def check_llama_cpp(path, text_file, ids_file, tokens_file=None, logits_file=None, tol=None):
    try:
        from llama_cpp import Llama
    except ImportError as e:
        print("llama-cpp-python missing: %s" % e)
        sys.exit(3)
    # F32 KV cache: the default F16 cache alone moves logits by ~1e-2
    llm = Llama(model_path=path, n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                type_k=0, type_v=0)
    with open(text_file, "rb") as f:
        text = f.read()
    r = gguf.GGUFReader(path)
    add_bos = bool(field(r, "tokenizer.ggml.add_bos_token", False))
    got = llm.tokenize(text, add_bos=add_bos, special=False)
    want = [int(x) for x in open(ids_file).read().split()]
    if got != want:
        k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
        fail("%s: llama.cpp tokenizes to %d ids, lmpress %d; first difference at %s: %s vs %s" % (
            path, len(got), len(want), k, got[k:k + 5] if k is not None else "",
            want[k:k + 5] if k is not None else ""))
    msg = "ok %s: llama.cpp loads it and tokenizes like lmpress (%d ids)" % (os.path.basename(path), len(got))
    if tokens_file:
        toks = [int(x) for x in open(tokens_file).read().split()]
        ref = np.load(logits_file)
        llm.eval(toks)
        out = np.array(llm.scores[:len(toks)], dtype=np.float32)
        d = float(np.abs(out - ref).max())
        if not d <= float(tol):
            fail("%s: llama.cpp logits differ from lmpress's by %g (tolerance %s)" % (path, d, tol))
        msg += "; logits of %d tokens within %.2g" % (len(toks), d)
    print(msg)


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "--llama-cpp":
        check_llama_cpp(*sys.argv[2:])
        return
    if len(sys.argv) < 2:
        print(__doc__)
        sys.exit(2)
    for case in sys.argv[1:]:
        check_case(case)


if __name__ == "__main__":
    main()
