#!/usr/bin/python3
"""Independent check of lmpress's GPTQ-safetensors export (tests/test_export.c), numpy only.

  check_gptq_export.py DIR EXPECT_DIR

Reads DIR/config.json, DIR/quantize_config.json and DIR/model.safetensors (parsed here:
8-byte header length, JSON header, raw little-endian data) and rebuilds every weight the way
the AutoGPTQ reference does:
  - qweight int32 [in*bits/32, out]: for 2/4/8 bits, value j of a word sits at bits j*bits;
    for 3 bits, 32 values use 3 words: word0 holds values 0-9 at bits 3j and the low 2 bits
    of value 10 at bits 30-31, word1 value 10's top bit at bit 0, values 11-20 at 3j+1 and
    the low bit of value 21 at bit 31, word2 value 21's top 2 bits at bits 0-1 and values
    22-31 at 3j+2;
  - qzeros int32 [groups, out*bits/32], the same packing along the output dimension, stored
    as zero - 1 (checkpoint_format "gptq") or as the zero ("gptq_v2");
  - scales fp16 [groups, out], g_idx int32 [in];
  - W[o][i] = scales[g][o] * (q[o][i] - zero[g][o]) with g = g_idx[i], in float32;
then converts Q and K rows from Hugging Face's rotate-half order to the interleaved order
lmpress uses (row 2i+j of a head <- row j*head_dim/2 + i) and compares every tensor, and the
dense ones (embeddings, norms, head), exactly with EXPECT_DIR/<lmpress name>.npy.

  check_gptq_export.py --tokenizer DIR TEXT_FILE IDS_FILE

(needs the `tokenizers` package instead; exit 3 without it) encodes TEXT_FILE with Hugging
Face tokenizers from DIR/tokenizer.json and compares with IDS_FILE (lmpress's ids, spaces)."""
import json
import os
import struct
import sys

import numpy as np


def fail(msg):
    print("FAIL " + msg)
    sys.exit(1)


def read_safetensors(path):
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    base = 8 + n
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        b, end = e["data_offsets"]
        buf = raw[base + b:base + end]
        dt = e["dtype"]
        if dt == "F32":
            a = np.frombuffer(buf, "<f4")
        elif dt == "F16":
            a = np.frombuffer(buf, "<f2").astype(np.float32)
        elif dt == "BF16":
            a = (np.frombuffer(buf, "<u2").astype(np.uint32) << 16).view(np.float32)
        elif dt == "I32":
            a = np.frombuffer(buf, "<i4")
        else:
            fail("%s: unexpected dtype %s" % (name, dt))
        out[name] = (dt, a.reshape(e["shape"]))
    return out


def unpack_words(words, bits):
    """words: uint32 [K, N] packed along axis 0 -> values [K*32/bits, N]."""
    K, N = words.shape
    mask = (1 << bits) - 1
    w = words.astype(np.uint64)
    if bits in (2, 4, 8):
        per = 32 // bits
        vals = np.stack([(w >> (bits * j)) & mask for j in range(per)], axis=1)  # [K, per, N]
        return vals.reshape(K * per, N).astype(np.int64)
    if bits != 3 or K % 3:
        fail("bad bit width %d / word count %d" % (bits, K))
    out = np.zeros((K // 3 * 32, N), np.int64)
    for blk in range(K // 3):
        w0, w1, w2 = w[3 * blk], w[3 * blk + 1], w[3 * blk + 2]
        v = out[32 * blk:32 * blk + 32]
        for j in range(10):
            v[j] = (w0 >> (3 * j)) & 7
        v[10] = ((w0 >> 30) & 3) | ((w1 & 1) << 2)
        for j in range(10):
            v[11 + j] = (w1 >> (3 * j + 1)) & 7
        v[21] = ((w1 >> 31) & 1) | ((w2 & 3) << 1)
        for j in range(10):
            v[22 + j] = (w2 >> (3 * j + 2)) & 7
    return out


def rotate_half_to_interleaved(W, n_heads, hd):
    out = np.empty_like(W)
    half = hd // 2
    for h in range(n_heads):
        for i in range(half):
            for j in range(2):
                out[h * hd + 2 * i + j] = W[h * hd + j * half + i]
    return out


def check_tokenizer(d, text_file, ids_file):
    try:
        from tokenizers import Tokenizer
    except ImportError as e:
        print("tokenizers package missing: %s" % e)
        sys.exit(3)
    t = Tokenizer.from_file(os.path.join(d, "tokenizer.json"))
    with open(text_file, encoding="utf-8", newline="") as f:
        text = f.read()
    got = t.encode(text).ids
    want = [int(x) for x in open(ids_file).read().split()]
    if got != want:
        k = next((i for i in range(min(len(got), len(want))) if got[i] != want[i]), None)
        fail("%s/tokenizer.json: %d ids, lmpress %d; first difference at %s: %s vs %s" % (
            d, len(got), len(want), k, got[k:k + 5] if k is not None else "",
            want[k:k + 5] if k is not None else ""))
    print("ok %s/tokenizer.json: Hugging Face tokenizers gives lmpress's %d ids" % (
        os.path.basename(d.rstrip("/")), len(got)))


def main():
    if len(sys.argv) == 5 and sys.argv[1] == "--tokenizer":
        check_tokenizer(sys.argv[2], sys.argv[3], sys.argv[4])
        return
    if len(sys.argv) != 3:
        print(__doc__)
        sys.exit(2)
    d, exp_dir = sys.argv[1], sys.argv[2]
    cfg = json.load(open(os.path.join(d, "config.json")))
    qc = json.load(open(os.path.join(d, "quantize_config.json")))
    if qc != cfg["quantization_config"]:
        fail("quantize_config.json and config.json's quantization_config differ")
    if qc["quant_method"] != "gptq":
        fail("quant_method")
    bits, group = qc["bits"], qc["group_size"]
    v1 = qc["checkpoint_format"] == "gptq"
    tensors = read_safetensors(os.path.join(d, "model.safetensors"))
    hd = cfg["head_dim"]
    H, KV, L = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_hidden_layers"]
    n_checked = n_act = 0

    def expect(name, got):
        nonlocal n_checked
        exp = np.load(os.path.join(exp_dir, name + ".npy"))
        got = got.astype(np.float32).reshape(exp.shape)
        if not np.array_equal(got, exp):
            bad = np.argwhere(got != exp)[0]
            fail("%s differs at %s: export %r, lmpress %r" % (name, tuple(bad), got[tuple(bad)],
                                                             exp[tuple(bad)]))
        n_checked += 1

    lin = [("self_attn.q_proj", "attn_q", H), ("self_attn.k_proj", "attn_k", KV),
           ("self_attn.v_proj", "attn_v", 0), ("self_attn.o_proj", "attn_output", 0),
           ("mlp.gate_proj", "ffn_gate", 0), ("mlp.up_proj", "ffn_up", 0),
           ("mlp.down_proj", "ffn_down", 0)]
    for l in range(L):
        for hf, ours, heads in lin:
            p = "model.layers.%d.%s." % (l, hf)
            dt, qw = tensors[p + "qweight"]
            _, qz = tensors[p + "qzeros"]
            _, sc = tensors[p + "scales"]
            _, gi = tensors[p + "g_idx"]
            if dt != "I32" or tensors[p + "scales"][0] != "F16":
                fail(p + ": qweight must be I32 and scales F16")
            n_in, n_out = qw.shape[0] * 32 // bits, qw.shape[1]
            q = unpack_words(qw.view(np.uint32), bits).T  # [out, in]
            z = unpack_words(qz.view(np.uint32).T, bits).T  # [groups, out]
            if v1:
                z = z + 1
            if q.shape != (n_out, n_in) or sc.shape != (z.shape[0], n_out) or gi.shape != (n_in,):
                fail(p + ": inconsistent shapes")
            g_nat = np.arange(n_in) // (group if group > 0 else n_in)
            if not np.array_equal(gi, g_nat):
                n_act += 1
            W = (q.astype(np.float32) - z[gi, :].T.astype(np.float32)) * sc[gi, :].T
            if heads:
                W = rotate_half_to_interleaved(W, heads, hd)
            expect("blk.%d.%s.weight" % (l, ours), W)
        for hf, ours in (("input_layernorm.weight", "attn_norm.weight"),
                         ("post_attention_layernorm.weight", "ffn_norm.weight")):
            expect("blk.%d.%s" % (l, ours), tensors["model.layers.%d.%s" % (l, hf)][1])
    expect("token_embd.weight", tensors["model.embed_tokens.weight"][1])
    expect("output_norm.weight", tensors["model.norm.weight"][1])
    if not cfg["tie_word_embeddings"]:
        expect("output.weight", tensors["lm_head.weight"][1])
    elif "lm_head.weight" in tensors:
        fail("tied model with an lm_head.weight")
    print("ok %s: %d tensors equal (%d-bit, group %d, %s, %d act-order g_idx)" % (
        os.path.basename(d.rstrip("/")), n_checked, bits, group, qc["checkpoint_format"], n_act))


if __name__ == "__main__":
    main()
