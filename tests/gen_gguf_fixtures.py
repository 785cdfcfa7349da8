#!/usr/bin/python3
"""Fixtures for tests/test_gguf.c, made with numpy only (run: /usr/bin/python3 tests/gen_gguf_fixtures.py).

Writes, deterministically (fixed seed):
  tests/data/gguf/blocks_<type>.bin / .npy  random raw blocks of each ggml type and their
                                            dequantized values (float32), computed here in
                                            numpy straight from the block definitions of the
                                            GGUF spec (ggml-common.h), independently of the C code
  tests/data/gguf/tiny_llama.gguf           a 2-layer llama (dim 256) with tensors of every
                                            supported type, per-layer head/ffn arrays, a gpt2
                                            (byte-level BPE) tokenizer, GGUF v2, alignment 64
  tests/data/gguf/tiny_llama_expected.txt   one line per tensor: name rows cols
  tests/data/gguf/tiny_llama_expected.npy   per tensor (same order): sum, sum|x|, sum x_k*((k%7)-3)
                                            and the first and last rows of the dequantized [out][in]
                                            matrix, float32 (full values would be ~800 KB)
  tests/data/gguf/micro_llama.gguf          a valid 1-layer dim-32 llama with an SPM tokenizer
                                            (also a small fuzzing seed)
  tests/bad/gguf/*.gguf                     corrupt files that must fail cleanly
  tests/data/gguf/bad_expected.txt          file, expected status (FORMAT/UNSUPPORTED), substring
"""
import os
import struct

import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(ROOT, "data", "gguf")
BAD = os.path.join(ROOT, "bad", "gguf")

# ggml type ids and (block elements, block bytes)
F32, F16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K, BF16 = 0, 1, 2, 3, 8, 12, 14, 30
BLOCK = {F32: (1, 4), F16: (1, 2), BF16: (1, 2), Q4_0: (32, 18), Q4_1: (32, 20),
         Q8_0: (32, 34), Q4_K: (256, 144), Q6_K: (256, 210)}
TNAME = {F32: "f32", F16: "f16", BF16: "bf16", Q4_0: "q4_0", Q4_1: "q4_1", Q8_0: "q8_0",
         Q4_K: "q4_K", Q6_K: "q6_K"}

# GGUF metadata value types
U8, I8, U16, I16, U32, I32, VF32, BOOL, STR, ARR, U64, I64, VF64 = range(13)
SCALAR_FMT = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", VF32: "<f",
              BOOL: "<?", U64: "<Q", I64: "<q", VF64: "<d"}

rng = np.random.default_rng(20240611)


# ---- dequantization, from the block definitions ------------------------------------------

def dq_f32(raw):
    return np.frombuffer(raw, "<f4").astype(np.float32)


def dq_f16(raw):
    return np.frombuffer(raw, "<f2").astype(np.float32)


def dq_bf16(raw):
    return (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)


def dq_q8_0(raw):
    b = np.frombuffer(raw, np.dtype([("d", "<f2"), ("q", "i1", 32)]))
    return (b["q"].astype(np.float32) * b["d"].astype(np.float32)[:, None]).ravel()


def nibbles16(qs):
    """(nb, 16) bytes -> (nb, 32) values: low nibbles are elements 0..15, high 16..31."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=1).astype(np.float32)


def dq_q4_0(raw):
    b = np.frombuffer(raw, np.dtype([("d", "<f2"), ("q", "u1", 16)]))
    return ((nibbles16(b["q"]) - np.float32(8)) * b["d"].astype(np.float32)[:, None]).ravel()


def dq_q4_1(raw):
    b = np.frombuffer(raw, np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", 16)]))
    d = b["d"].astype(np.float32)[:, None]
    m = b["m"].astype(np.float32)[:, None]
    return (nibbles16(b["q"]) * d + m).ravel()


def dq_q4_K(raw):
    b = np.frombuffer(raw, np.dtype([("d", "<f2"), ("dmin", "<f2"), ("s", "u1", 12),
                                      ("q", "u1", 128)]))
    s = b["s"].astype(np.int32)
    nb = len(b)
    # 8 sub-blocks of 32: 6-bit scale and 6-bit min each, packed into 12 bytes
    sc = np.zeros((nb, 8), np.int32)
    mn = np.zeros((nb, 8), np.int32)
    sc[:, :4] = s[:, 0:4] & 63
    mn[:, :4] = s[:, 4:8] & 63
    sc[:, 4:] = (s[:, 8:12] & 15) | ((s[:, 0:4] >> 6) << 4)
    mn[:, 4:] = (s[:, 8:12] >> 4) | ((s[:, 4:8] >> 6) << 4)
    q = b["q"].reshape(nb, 4, 32)  # 4 chunks of 32 bytes, each holding 2 sub-blocks
    q = np.stack([q & 0x0F, q >> 4], axis=2).reshape(nb, 8, 32).astype(np.float32)
    dd = b["d"].astype(np.float32)[:, None] * sc.astype(np.float32)
    mm = b["dmin"].astype(np.float32)[:, None] * mn.astype(np.float32)
    return (dd[:, :, None] * q - mm[:, :, None]).ravel()


def dq_q6_K(raw):
    b = np.frombuffer(raw, np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("sc", "i1", 16),
                                      ("d", "<f2")]))
    e = np.arange(256)
    h, r = e // 128, e % 128       # half of the block, position in the half
    g, l = r // 32, r % 32         # group of 32 inside the half, lane
    ql = b["ql"][:, 64 * h + l + 32 * (g & 1)].astype(np.int32)
    low4 = np.where(g < 2, ql & 0x0F, ql >> 4)
    high2 = (b["qh"][:, 32 * h + l].astype(np.int32) >> (2 * g)) & 3
    q = ((low4 | (high2 << 4)) - 32).astype(np.float32)
    scale = b["sc"][:, 8 * h + l // 16 + 2 * g].astype(np.float32)
    d = b["d"].astype(np.float32)[:, None]
    return ((d * scale) * q).ravel()


DEQUANT = {F32: dq_f32, F16: dq_f16, BF16: dq_bf16, Q8_0: dq_q8_0, Q4_0: dq_q4_0,
           Q4_1: dq_q4_1, Q4_K: dq_q4_K, Q6_K: dq_q6_K}


# ---- random data -----------------------------------------------------------------------

def f16_bytes(vals):
    v = np.asarray(vals, np.float16)
    assert np.all(np.isfinite(v))
    return v.astype("<f2")


def random_blocks(t, nb):
    """nb random blocks: random quant bytes, sane finite fp16 scales."""
    if t == F32:
        return rng.normal(0, 0.5, nb).astype("<f4").tobytes()
    if t == F16:
        return f16_bytes(rng.normal(0, 0.5, nb)).tobytes()
    if t == BF16:
        bits = (rng.normal(0, 0.5, nb).astype(np.float32).view(np.uint32) >> 16).astype("<u2")
        return bits.tobytes()
    if t == Q8_0:
        b = np.zeros(nb, np.dtype([("d", "<f2"), ("q", "i1", 32)]))
        b["d"] = f16_bytes(rng.uniform(-0.02, 0.02, nb))
        b["q"] = rng.integers(-128, 128, (nb, 32))
    elif t == Q4_0:
        b = np.zeros(nb, np.dtype([("d", "<f2"), ("q", "u1", 16)]))
        b["d"] = f16_bytes(rng.uniform(-0.1, 0.1, nb))
        b["q"] = rng.integers(0, 256, (nb, 16))
    elif t == Q4_1:
        b = np.zeros(nb, np.dtype([("d", "<f2"), ("m", "<f2"), ("q", "u1", 16)]))
        b["d"] = f16_bytes(rng.uniform(0, 0.1, nb))
        b["m"] = f16_bytes(rng.uniform(-0.8, 0, nb))
        b["q"] = rng.integers(0, 256, (nb, 16))
    elif t == Q4_K:
        b = np.zeros(nb, np.dtype([("d", "<f2"), ("dmin", "<f2"), ("s", "u1", 12),
                                   ("q", "u1", 128)]))
        b["d"] = f16_bytes(rng.uniform(0, 0.01, nb))
        b["dmin"] = f16_bytes(rng.uniform(0, 0.01, nb))
        b["s"] = rng.integers(0, 256, (nb, 12))
        b["q"] = rng.integers(0, 256, (nb, 128))
    elif t == Q6_K:
        b = np.zeros(nb, np.dtype([("ql", "u1", 128), ("qh", "u1", 64), ("sc", "i1", 16),
                                   ("d", "<f2")]))
        b["ql"] = rng.integers(0, 256, (nb, 128))
        b["qh"] = rng.integers(0, 256, (nb, 64))
        b["sc"] = rng.integers(-128, 128, (nb, 16))
        b["d"] = f16_bytes(rng.uniform(-0.001, 0.001, nb))
    else:
        raise ValueError(t)
    return b.tobytes()


def random_tensor(t, nelem):
    be, bb = BLOCK[t]
    assert nelem % be == 0
    raw = random_blocks(t, nelem // be)
    assert len(raw) == nelem // be * bb
    return raw


# ---- GGUF writing ----------------------------------------------------------------------

def gstr(s):
    if isinstance(s, str):
        s = s.encode("utf-8")
    return struct.pack("<Q", len(s)) + s


def enc_value(vt, v):
    if vt == STR:
        return gstr(v)
    if vt == ARR:
        et, items = v
        out = struct.pack("<IQ", et, len(items))
        return out + b"".join(enc_value(et, x) for x in items)
    return struct.pack(SCALAR_FMT[vt], v)


def gguf(kvs, tensors, version=3, alignment=32, magic=b"GGUF", n_tensors=None, n_kv=None,
         offsets=None, types=None):
    """kvs: [(key, vtype, value)]; tensors: [(name, ne (innermost first), ggml type, raw)].
    The optional arguments override fields to build corrupt files."""
    out = bytearray(magic + struct.pack("<I", version))
    out += struct.pack("<QQ", len(tensors) if n_tensors is None else n_tensors,
                       len(kvs) if n_kv is None else n_kv)
    for k, vt, v in kvs:
        out += gstr(k) + struct.pack("<I", vt) + enc_value(vt, v)
    offs, pos = [], 0
    for name, ne, t, raw in tensors:
        pos = (pos + alignment - 1) // alignment * alignment
        offs.append(pos)
        pos += len(raw)
    for i, (name, ne, t, raw) in enumerate(tensors):
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", d) for d in ne)
        out += struct.pack("<IQ", t if types is None else types[i],
                           offs[i] if offsets is None else offsets[i])
    out += bytes(-len(out) % alignment)
    base = len(out)
    for (name, ne, t, raw), off in zip(tensors, offs):
        out += bytes(base + off - len(out))
        out += raw
    return bytes(out)


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---- fixtures ----------------------------------------------------------------------------

def block_fixtures():
    for t, nb in [(Q8_0, 16), (Q4_0, 16), (Q4_1, 16), (Q4_K, 4), (Q6_K, 4), (F16, 64),
                  (BF16, 64)]:
        raw = random_blocks(t, nb)
        write(os.path.join(DATA, "blocks_%s.bin" % TNAME[t]), raw)
        np.save(os.path.join(DATA, "blocks_%s.npy" % TNAME[t]), DEQUANT[t](raw))


def tiny_llama():
    dim, n_layers, n_heads, head_dim, vocab = 256, 2, 2, 32, 32
    kv_heads, ffn = [1, 2], [32, 64]
    types = {  # every supported type, on rows whose length fits its block
        "token_embd.weight": Q4_K, "output_norm.weight": F32,
        "blk.0.attn_norm.weight": F32, "blk.0.attn_q.weight": Q4_K, "blk.0.attn_k.weight": Q4_0,
        "blk.0.attn_v.weight": Q4_1, "blk.0.attn_output.weight": Q8_0,
        "blk.0.ffn_norm.weight": F32, "blk.0.ffn_gate.weight": Q6_K, "blk.0.ffn_up.weight": F16,
        "blk.0.ffn_down.weight": BF16,
        "blk.1.attn_norm.weight": F32, "blk.1.attn_q.weight": Q8_0, "blk.1.attn_k.weight": Q6_K,
        "blk.1.attn_v.weight": Q4_K, "blk.1.attn_output.weight": Q4_0,
        "blk.1.ffn_norm.weight": F32, "blk.1.ffn_gate.weight": Q4_0, "blk.1.ffn_up.weight": Q4_1,
        "blk.1.ffn_down.weight": Q8_0,
    }
    shapes = {"token_embd.weight": (vocab, dim), "output_norm.weight": (dim,)}  # (out, in)
    for l in range(n_layers):
        q, kv, f = n_heads * head_dim, kv_heads[l] * head_dim, ffn[l]
        shapes.update({
            "blk.%d.attn_norm.weight" % l: (dim,), "blk.%d.attn_q.weight" % l: (q, dim),
            "blk.%d.attn_k.weight" % l: (kv, dim), "blk.%d.attn_v.weight" % l: (kv, dim),
            "blk.%d.attn_output.weight" % l: (dim, q), "blk.%d.ffn_norm.weight" % l: (dim,),
            "blk.%d.ffn_gate.weight" % l: (f, dim), "blk.%d.ffn_up.weight" % l: (f, dim),
            "blk.%d.ffn_down.weight" % l: (dim, f)})
    tensors, manifest, expected = [], [], []
    for name, t in types.items():
        shp = shapes[name]
        n = int(np.prod(shp))
        raw = random_tensor(t, n)
        tensors.append((name, list(reversed(shp)), t, raw))  # GGUF ne is innermost first
        x = DEQUANT[t](raw).astype(np.float64)
        rows, cols = (shp[0], shp[1]) if len(shp) == 2 else (shp[0], 1)
        m = x.reshape(rows, cols)
        w = (np.arange(n) % 7) - 3
        manifest.append("%s %d %d" % (name, rows, cols))
        expected.append(np.array([x.sum(), np.abs(x).sum(), (x * w).sum()]))
        expected.append(m[0])
        expected.append(m[-1])
    toks = ["<s>", "</s>", "a", "b", "c", "d", "e", "h", "l", "o", "t", "\u0120",
            "\u0120t", "he", "\u0120the", "ll", "\u0120a", "0", "1", "2", ".", ",", "\u010a",
            "\u00e2\u0122\u013b", "th", "lo", "hel", "hello", "\u0120hello", "<|im_end|>",
            "x", "y"]
    assert len(toks) == vocab
    ttypes = [3, 3] + [1] * 27 + [3, 1, 1]
    merges = ["\u0120 t", "h e", "\u0120t he", "l l", "t h", "l o", "he l", "hel lo",
              "\u0120 hello", "\u0120 a"]
    kvs = [
        ("general.architecture", STR, "llama"),
        ("general.name", STR, "tiny-mixed"),
        ("general.alignment", U32, 64),
        ("llama.context_length", U64, 128),
        ("llama.embedding_length", U32, dim),
        ("llama.block_count", U32, n_layers),
        ("llama.feed_forward_length", ARR, (I32, ffn)),
        ("llama.attention.head_count", U32, n_heads),
        ("llama.attention.head_count_kv", ARR, (U32, kv_heads)),
        ("llama.attention.key_length", U32, head_dim),
        ("llama.attention.value_length", U32, head_dim),
        ("llama.rope.dimension_count", U32, head_dim),
        ("llama.rope.freq_base", VF32, 500000.0),
        ("llama.attention.layer_norm_rms_epsilon", VF32, 1e-6),
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.pre", STR, "smollm"),
        ("tokenizer.ggml.tokens", ARR, (STR, toks)),
        ("tokenizer.ggml.token_type", ARR, (I32, ttypes)),
        ("tokenizer.ggml.merges", ARR, (STR, merges)),
        ("tokenizer.ggml.bos_token_id", U32, 0),
        ("tokenizer.ggml.eos_token_id", U32, 29),
        ("tokenizer.ggml.padding_token_id", U32, 0xFFFFFFFF),
        ("tokenizer.ggml.add_bos_token", BOOL, False),
        # metadata we do not use, of every value type, to exercise skipping
        ("test.u8", U8, 7), ("test.i8", I8, -7), ("test.u16", U16, 65535), ("test.i16", I16, -2),
        ("test.i64", I64, -(1 << 40)), ("test.f64", VF64, 2.5), ("test.bool", BOOL, True),
        ("test.empty", ARR, (STR, [])),
        ("test.nested", ARR, (ARR, [(U16, [1, 2]), (STR, ["x", "yz"]), (ARR, [(I8, [-1])])])),
    ]
    data = gguf(kvs, tensors, version=2, alignment=64)
    write(os.path.join(DATA, "tiny_llama.gguf"), data)
    with open(os.path.join(DATA, "tiny_llama_expected.txt"), "w") as f:
        f.write("\n".join(manifest) + "\n")
    np.save(os.path.join(DATA, "tiny_llama_expected.npy"),
            np.concatenate(expected).astype(np.float32))
    return len(data)


def micro_parts(vocab=8, n_tok=None, arch="llama", tok_model="llama", extra_kvs=(),
                drop=(), extra_tensors=(), ffn_arr=None, nan=False):
    """A tiny valid llama (dim 32, 1 layer) as (kvs, tensors); options break one thing."""
    dim, ffn, nh, nkv, hd = 32, 32, 2, 1, 16
    n_tok = vocab if n_tok is None else n_tok
    toks = ["<unk>", "<s>", "</s>"] + ["\u2581w%d" % i for i in range(n_tok - 3)]
    kvs = [
        ("general.architecture", STR, arch),
        ("general.name", STR, "micro"),
        ("llama.context_length", U32, 64),
        ("llama.embedding_length", U32, dim),
        ("llama.block_count", U32, 1),
        ("llama.feed_forward_length", U32, ffn) if ffn_arr is None else
        ("llama.feed_forward_length", ARR, (U32, ffn_arr)),
        ("llama.attention.head_count", U32, nh),
        ("llama.attention.head_count_kv", U32, nkv),
        ("llama.attention.layer_norm_rms_epsilon", VF32, 1e-5),
        ("tokenizer.ggml.model", STR, tok_model),
        ("tokenizer.ggml.tokens", ARR, (STR, toks)),
        ("tokenizer.ggml.scores", ARR, (VF32, [-float(i) for i in range(n_tok)])),
        ("tokenizer.ggml.token_type", ARR, (I32, [2, 3, 3] + [1] * (n_tok - 3))),
        ("tokenizer.ggml.bos_token_id", U32, 1),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.ggml.unknown_token_id", U32, 0),
    ]
    kvs = [kv for kv in kvs if kv[0] not in drop] + list(extra_kvs)
    spec = [("token_embd.weight", (vocab, dim), Q8_0), ("output_norm.weight", (dim,), F32),
            ("blk.0.attn_norm.weight", (dim,), F32), ("blk.0.attn_q.weight", (nh * hd, dim), Q4_0),
            ("blk.0.attn_k.weight", (nkv * hd, dim), Q4_1),
            ("blk.0.attn_v.weight", (nkv * hd, dim), Q4_0),
            ("blk.0.attn_output.weight", (dim, nh * hd), Q4_0),
            ("blk.0.ffn_norm.weight", (dim,), F16), ("blk.0.ffn_gate.weight", (ffn, dim), Q4_1),
            ("blk.0.ffn_up.weight", (ffn, dim), Q8_0), ("blk.0.ffn_down.weight", (dim, ffn), Q4_0)]
    tensors = []
    for name, shp, t in spec + list(extra_tensors):
        if name in drop:
            continue
        raw = random_tensor(t, int(np.prod(shp)))
        if nan and name == "blk.0.attn_norm.weight":
            raw = np.float32(np.nan).tobytes() + raw[4:]
        tensors.append((name, list(reversed(shp)), t, raw))
    return kvs, tensors


def bad_files():
    os.makedirs(BAD, exist_ok=True)
    cases = []  # (file, status, substring)

    def bad(name, data, status, sub):
        write(os.path.join(BAD, name), data)
        cases.append((name, status, sub))

    # structurally minimal file: one F32 tensor of 32 elements
    kv1 = [("general.architecture", STR, "llama")]
    t1 = [("output_norm.weight", [32], F32, np.ones(32, "<f4").tobytes())]
    t2 = t1 + [("token_embd.weight", [32, 2], F32, np.ones(64, "<f4").tobytes())]
    good = gguf(kv1, t1)
    bad("bad_magic.gguf", b"GGUX" + good[4:], "FORMAT", "magic")
    bad("version1.gguf", gguf(kv1, t1, version=1), "UNSUPPORTED", "version")
    bad("version4.gguf", gguf(kv1, t1, version=4), "UNSUPPORTED", "version")
    bad("huge_tensor_count.gguf", gguf(kv1, t1, n_tensors=1 << 40), "FORMAT", "tensor count")
    bad("many_tensors.gguf", gguf(kv1, t1, n_tensors=5000), "FORMAT", "tensor count")
    bad("huge_kv_count.gguf", gguf(kv1, t1, n_kv=(1 << 62) + 5), "FORMAT", "metadata count")
    # key length 2^63 (first key's length field sits right after the 24-byte header)
    bad("huge_key_len.gguf", good[:24] + struct.pack("<Q", 1 << 63) + good[32:], "FORMAT",
        "string length")
    bad("huge_array_len.gguf",
        gguf(kv1 + [("x.arr", ARR, (U32, [1, 2]))], t1).replace(
            struct.pack("<IQ", U32, 2), struct.pack("<IQ", U32, 1 << 61), 1),
        "FORMAT", "array")
    bad("huge_string_array.gguf",
        gguf(kv1 + [("x.arr", ARR, (STR, ["a"]))], t1).replace(
            struct.pack("<IQ", STR, 1), struct.pack("<IQ", STR, (1 << 64) - 1), 1),
        "FORMAT", "array")
    bad("unknown_value_type.gguf", gguf(kv1 + [("x.v", U8, 1)], t1).replace(
        gstr("x.v") + struct.pack("<I", U8), gstr("x.v") + struct.pack("<I", 13), 1),
        "FORMAT", "value type")
    deep = (U8, [1])
    for _ in range(20):
        deep = (ARR, [deep])
    bad("nested_too_deep.gguf", gguf(kv1 + [("x.deep", ARR, deep)], t1), "FORMAT", "nested")
    bad("duplicate_key.gguf", gguf(kv1 + [("x.a", U8, 1), ("x.a", U8, 2)], t1), "FORMAT",
        "duplicate")
    bad("bad_alignment.gguf", gguf(kv1 + [("general.alignment", U32, 3)], t1), "FORMAT",
        "alignment")
    bad("zero_alignment.gguf", gguf(kv1 + [("general.alignment", U32, 0)], t1), "FORMAT",
        "alignment")
    bad("alignment_string.gguf", gguf(kv1 + [("general.alignment", STR, "32")], t1), "FORMAT",
        "alignment")
    t5 = [("output_norm.weight", [32, 1, 1, 1, 1], F32, np.ones(32, "<f4").tobytes())]
    bad("ndims5.gguf", gguf(kv1, t5), "FORMAT", "n_dims")
    t0 = [("output_norm.weight", [0], F32, b"")]
    bad("zero_dim.gguf", gguf(kv1, t0), "FORMAT", "dimension")
    tov = [("output_norm.weight", [1 << 32, 1 << 32], F32, np.ones(32, "<f4").tobytes())]
    bad("dims_overflow.gguf", gguf(kv1, tov), "FORMAT", "overflow")
    tbig = [("output_norm.weight", [1 << 40, 2], F32, np.ones(32, "<f4").tobytes())]
    bad("dims_too_big.gguf", gguf(kv1, tbig), "FORMAT", "past end")
    bad("offset_past_end.gguf", gguf(kv1, t1, offsets=[1 << 20]), "FORMAT", "past end")
    bad("offset_huge.gguf", gguf(kv1, t1, offsets=[(1 << 64) - 32]), "FORMAT", "past end")
    bad("misaligned_offset.gguf", gguf(kv1, t2, offsets=[0, 132]), "FORMAT", "alignment")
    bad("overlap.gguf", gguf(kv1, t2, offsets=[0, 96]), "FORMAT", "overlap")
    bad("unknown_type.gguf", gguf(kv1, t1, types=[99]), "UNSUPPORTED", "type")
    bad("unsupported_type.gguf", gguf(kv1, t1, types=[13]), "UNSUPPORTED", "Q5_K")
    bad("q4_K_row.gguf", gguf(kv1, t1, types=[Q4_K]), "FORMAT", "multiple")
    bad("truncated_data.gguf", gguf(kv1, t1)[:-8], "FORMAT", "past end")
    bad("empty.gguf", b"", "FORMAT", "truncated")
    bad("name_nul.gguf", gguf(kv1, [("out\0put", [32], F32, np.ones(32, "<f4").tobytes())]),
        "FORMAT", "name")

    # semantic errors on an otherwise valid micro model
    def micro_bad(name, status, sub, **kw):
        kvs, tensors = micro_parts(**kw)
        bad(name, gguf(kvs, tensors), status, sub)

    micro_bad("arch_gpt2.gguf", "UNSUPPORTED", "general.architecture", arch="gpt2")
    micro_bad("no_arch.gguf", "FORMAT", "general.architecture", drop=("general.architecture",))
    micro_bad("no_tokenizer.gguf", "FORMAT", "no tokenizer", drop=("tokenizer.ggml.tokens",))
    micro_bad("tok_model_bert.gguf", "UNSUPPORTED", "tokenizer.ggml.model", tok_model="bert")
    micro_bad("token_count.gguf", "FORMAT", "tokens", n_tok=7)
    micro_bad("missing_dim.gguf", "FORMAT", "embedding_length",
              drop=("llama.embedding_length",))
    micro_bad("missing_tensor.gguf", "FORMAT", "blk.0.ffn_up.weight",
              drop=("blk.0.ffn_up.weight",))
    micro_bad("ffn_array_len.gguf", "FORMAT", "feed_forward_length", ffn_arr=[32, 32])
    micro_bad("bos_range.gguf", "FORMAT", "bos_token_id",
              drop=("tokenizer.ggml.bos_token_id",),
              extra_kvs=[("tokenizer.ggml.bos_token_id", U32, 8)])
    micro_bad("rope_freqs.gguf", "UNSUPPORTED", "rope_freqs",
              extra_tensors=[("rope_freqs.weight", (8,), F32)])
    micro_bad("layer_range.gguf", "FORMAT", "blk.1.attn_q.weight",
              extra_tensors=[("blk.1.attn_q.weight", (32, 32), Q4_0)])
    micro_bad("experts.gguf", "UNSUPPORTED", "expert", extra_kvs=[("llama.expert_count", U32, 8)])
    micro_bad("nan_weight.gguf", "FORMAT", "non-finite", nan=True)
    micro_bad("shape_mismatch.gguf", "FORMAT", "blk.0.attn_q.weight",
              drop=("blk.0.attn_q.weight",),
              extra_tensors=[("blk.0.attn_q.weight", (16, 32), Q4_0)])
    kvs, tensors = micro_parts()
    tensors.append(tensors[1])  # output_norm.weight twice
    bad("duplicate_tensor.gguf", gguf(kvs, tensors), "FORMAT", "duplicate tensor")

    with open(os.path.join(DATA, "bad_expected.txt"), "w") as f:
        f.write("# file status substring-of-the-message (written by tests/gen_gguf_fixtures.py)\n")
        for name, status, sub in cases:
            f.write("%s %s %s\n" % (name, status, sub))


def main():
    block_fixtures()
    n = tiny_llama()
    kvs, tensors = micro_parts()
    write(os.path.join(DATA, "micro_llama.gguf"), gguf(kvs, tensors))
    bad_files()
    print("tiny_llama.gguf: %d bytes" % n)


if __name__ == "__main__":
    main()
