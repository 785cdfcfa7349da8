#!/usr/bin/python3
"""Writes the bad-input corpus under tests/bad/ (llama2c/, lmp/) and one small valid
model in tests/data/tiny/ (llama2.c .bin + tokenizer, and .lmp written by this script,
independently of our C writer, from docs/FORMAT.md).

Every file under tests/bad/<kind>/ must make `lmpress convert` fail with exit code 2 and
one line naming the file. Run: /usr/bin/python3 tests/gen_bad_corpus.py (numpy only)."""
import json, os, shutil, struct, zlib
import numpy as np

ROOT = os.path.dirname(os.path.abspath(__file__))
BAD = os.path.join(ROOT, "bad")
TINY = os.path.join(ROOT, "data", "tiny")
rng = np.random.default_rng(1234)

# tiny llama: dim 16, hidden 40, 2 layers, 4 heads, 2 kv heads, vocab 8, seq 32
D, F, L, H, KV, V, S = 16, 40, 2, 4, 2, 8, 32
HD = D // H


def tiny_weights():
    w = {}
    w["emb"] = rng.standard_normal((V, D)).astype(np.float32) * 0.5
    w["rms_att"] = 1 + 0.1 * rng.standard_normal((L, D)).astype(np.float32)
    w["wq"] = rng.standard_normal((L, D, D)).astype(np.float32) * 0.2
    w["wk"] = rng.standard_normal((L, KV * HD, D)).astype(np.float32) * 0.2
    w["wv"] = rng.standard_normal((L, KV * HD, D)).astype(np.float32) * 0.2
    w["wo"] = rng.standard_normal((L, D, D)).astype(np.float32) * 0.2
    w["rms_ffn"] = 1 + 0.1 * rng.standard_normal((L, D)).astype(np.float32)
    w["w1"] = rng.standard_normal((L, F, D)).astype(np.float32) * 0.2
    w["w2"] = rng.standard_normal((L, D, F)).astype(np.float32) * 0.2
    w["w3"] = rng.standard_normal((L, F, D)).astype(np.float32) * 0.2
    w["rms_final"] = 1 + 0.1 * rng.standard_normal(D).astype(np.float32)
    return w


ORDER = ["emb", "rms_att", "wq", "wk", "wv", "wo", "rms_ffn", "w1", "w2", "w3", "rms_final"]


def llama2c_bytes(w, header=(D, F, L, H, KV, V, S)):
    out = struct.pack("<7i", *header)
    for k in ORDER:
        out += w[k].tobytes()
    out += np.zeros(S * HD, np.float32).tobytes()  # freq_cis_real + imag (S * HD/2 each)
    return out


TOKENS = [b"<unk>", b"\n<s>\n", b"\n</s>\n", b" a", b"b", b"c", b" ", b"a"]


def tokenizer_bytes(tokens=TOKENS):
    out = struct.pack("<i", max(len(t) for t in tokens))
    for i, t in enumerate(tokens):
        out += struct.pack("<fi", -float(i), len(t)) + t
    return out


def write(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


# ---- .lmp written independently from docs/FORMAT.md ----------------------------------

def align(x):
    return (x + 63) // 64 * 64


def lmp_bytes(w, mutate=None):
    tensors = [("token_embd.weight", w["emb"])]
    for l in range(L):
        tensors += [
            (f"blk.{l}.attn_norm.weight", w["rms_att"][l]), (f"blk.{l}.attn_q.weight", w["wq"][l]),
            (f"blk.{l}.attn_k.weight", w["wk"][l]), (f"blk.{l}.attn_v.weight", w["wv"][l]),
            (f"blk.{l}.attn_output.weight", w["wo"][l]), (f"blk.{l}.ffn_norm.weight", w["rms_ffn"][l]),
            (f"blk.{l}.ffn_gate.weight", w["w1"][l]), (f"blk.{l}.ffn_up.weight", w["w3"][l]),
            (f"blk.{l}.ffn_down.weight", w["w2"][l])]
    tensors.append(("output_norm.weight", w["rms_final"]))
    text = b"".join(TOKENS)
    offs = np.cumsum([0] + [len(t) for t in TOKENS]).astype(np.int32)
    blobs, table, end = [], [], 0
    def add(name, typ, shape, data):
        nonlocal end
        table.append({"name": name, "type": typ, "shape": list(shape), "offset": end,
                      "size": len(data), "crc32": zlib.crc32(data)})
        blobs.append((end, data))
        end = align(end + len(data))
    for name, a in tensors:
        add(name, "F32", a.shape, a.astype("<f4").tobytes())
    add("tokenizer.text", "U8", [len(text)], text)
    add("tokenizer.offsets", "I32", [V + 1], offs.astype("<i4").tobytes())
    add("tokenizer.scores", "F32", [V], (-np.arange(V, dtype=np.float32)).tobytes())
    add("tokenizer.types", "I32", [V], np.array([2, 3, 3, 1, 1, 1, 1, 1], "<i4").tobytes())
    hdr = {"format": "lmpress", "version": 1,
           "config": {"arch": "llama", "name": "tiny", "dim": D, "n_layers": L, "head_dim": HD,
                      "vocab": V, "max_ctx": S, "rope_theta": 10000.0, "norm_eps": 1e-5,
                      "tied": True, "attn_bias": False, "rope": "interleaved",
                      "layers": [{"n_heads": H, "n_kv_heads": KV, "ffn": F}] * L},
           "tokenizer": {"kind": "spm", "n_tokens": V, "n_merges": 0, "bos": 1, "eos": 2,
                         "unk": 0, "pad": -1, "add_bos": True, "add_space_prefix": True,
                         "space_is_plain": True, "pre_regex": None},
           "tensors": table}
    version, magic = 1, b"LMPF"
    if mutate:
        r = mutate(hdr, blobs)
        if r:
            magic, version = r
    hj = json.dumps(hdr).encode()
    out = bytearray(magic + struct.pack("<IQ", version, len(hj)) + hj)
    out += b"\0" * (align(len(out)) - len(out))
    base = len(out)
    data = bytearray(end)
    for off, b in blobs:
        data[off:off + len(b)] = b
    return bytes(out + data)


def main():
    w = tiny_weights()
    for d in (os.path.join(BAD, "llama2c"), os.path.join(BAD, "llama2c-notok"),
              os.path.join(BAD, "llama2c-tokmismatch"), os.path.join(BAD, "lmp"), TINY):
        shutil.rmtree(d, ignore_errors=True)
    # valid tiny model (tests check these load and agree with each other)
    write(os.path.join(TINY, "tiny.bin"), llama2c_bytes(w))
    write(os.path.join(TINY, "tok8.bin"), tokenizer_bytes())
    write(os.path.join(TINY, "tiny.lmp"), lmp_bytes(w))

    b = os.path.join(BAD, "llama2c")
    write(os.path.join(b, "tok8.bin"), tokenizer_bytes())  # so only the model is at fault
    good = llama2c_bytes(w)
    write(os.path.join(b, "garbage.bin"), bytes(rng.integers(0, 256, 100, dtype=np.uint8)))
    write(os.path.join(b, "empty.bin"), b"")
    write(os.path.join(b, "header-only.bin"), good[:28])
    write(os.path.join(b, "negative-dim.bin"), struct.pack("<7i", -16, F, L, H, KV, V, S) + good[28:])
    write(os.path.join(b, "zero-layers.bin"), struct.pack("<7i", D, F, 0, H, KV, V, S) + good[28:])
    write(os.path.join(b, "absurd-dims.bin"), struct.pack("<7i", 1 << 20, 1 << 23, 4000, 1 << 10, 1 << 10, 1 << 22, 1 << 20) + good[28:])
    write(os.path.join(b, "heads-not-dividing.bin"), struct.pack("<7i", D, F, L, 3, 3, V, S) + good[28:])
    write(os.path.join(b, "kv-heads-above-heads.bin"), struct.pack("<7i", D, F, L, H, 8, V, S) + good[28:])
    write(os.path.join(b, "truncated.bin"), good[:len(good) // 2])
    write(os.path.join(b, "trailing-bytes.bin"), good + b"\0" * 12)
    nan = bytearray(good)
    nan[28 + 4 * 5:28 + 4 * 6] = struct.pack("<f", float("nan"))
    write(os.path.join(b, "nan-weight.bin"), bytes(nan))
    inf = bytearray(good)
    inf[-4 * (S * HD) - 8:-4 * (S * HD) - 4] = struct.pack("<f", float("inf"))  # in rms_final
    write(os.path.join(b, "inf-weight.bin"), bytes(inf))
    # missing tokenizer: a good model alone in its folder
    write(os.path.join(BAD, "llama2c-notok", "model.bin"), good)
    # tokenizer for another vocabulary size (5 tokens) found as tokenizer.bin
    write(os.path.join(BAD, "llama2c-tokmismatch", "model.bin"), good)
    write(os.path.join(BAD, "llama2c-tokmismatch", "tokenizer.bin"), tokenizer_bytes(TOKENS[:5]))

    b = os.path.join(BAD, "lmp")
    def m_magic(h, bl): return (b"LMPX", 1)
    def m_version(h, bl): return (b"LMPF", 99)
    def m_no_config(h, bl): del h["config"]
    def m_offset_past_end(h, bl): h["tensors"][3]["offset"] = 1 << 40
    def m_misaligned(h, bl): h["tensors"][3]["offset"] += 4
    def m_unknown_type(h, bl): h["tensors"][3]["type"] = "Q7"
    def m_shape_mismatch(h, bl):  # q projection with a wrong shape (size kept consistent)
        t = h["tensors"][2]; t["shape"] = [D // 2, D * 2]
    def m_size_mismatch(h, bl): h["tensors"][2]["size"] -= 4
    def m_dims_overflow(h, bl): h["tensors"][2]["shape"] = [1 << 40, 1 << 40]
    def m_neg_dim(h, bl): h["tensors"][2]["shape"] = [-1, D]
    def m_absurd_layers(h, bl): h["config"]["n_layers"] = 1 << 40
    def m_layers_mismatch(h, bl): h["config"]["n_layers"] = 3
    def m_missing_tensor(h, bl): del h["tensors"][4]
    def m_duplicate(h, bl): h["tensors"].append(dict(h["tensors"][2]))
    def m_heads(h, bl): h["config"]["layers"] = [{"n_heads": 3, "n_kv_heads": 2, "ffn": F}] * L
    def m_no_tokenizer(h, bl):
        h["tensors"] = [t for t in h["tensors"] if not t["name"].startswith("tokenizer.")]
    def m_tok_count(h, bl): h["tokenizer"]["n_tokens"] = 7
    def m_crc(h, bl): h["tensors"][5]["crc32"] ^= 1
    def m_eps(h, bl): h["config"]["norm_eps"] = -1
    def m_name_type(h, bl): h["tensors"][1]["name"] = 12
    for name, fn in [("bad-magic", m_magic), ("bad-version", m_version), ("no-config", m_no_config),
                     ("offset-past-end", m_offset_past_end), ("misaligned-offset", m_misaligned),
                     ("unknown-type", m_unknown_type), ("shape-mismatch", m_shape_mismatch),
                     ("size-mismatch", m_size_mismatch), ("dims-overflow", m_dims_overflow),
                     ("negative-dim", m_neg_dim), ("absurd-layers", m_absurd_layers),
                     ("layer-list-mismatch", m_layers_mismatch), ("missing-tensor", m_missing_tensor),
                     ("duplicate-tensor", m_duplicate), ("heads-not-dividing", m_heads),
                     ("no-tokenizer", m_no_tokenizer), ("tokenizer-count-mismatch", m_tok_count),
                     ("crc-mismatch", m_crc), ("negative-eps", m_eps), ("name-not-string", m_name_type)]:
        write(os.path.join(b, name + ".lmp"), lmp_bytes(w, fn))
    # NaN weight with a correct crc
    w2 = {k: v.copy() for k, v in w.items()}
    w2["wv"][1, 3, 5] = np.nan
    write(os.path.join(b, "nan-weight.lmp"), lmp_bytes(w2))
    full = lmp_bytes(w)
    write(os.path.join(b, "truncated-header.lmp"), full[:40])
    write(os.path.join(b, "truncated-data.lmp"), full[:len(full) - 100])
    hdr_len = struct.unpack("<Q", full[8:16])[0]
    bad_json = bytearray(full)
    bad_json[16 + hdr_len // 2] = ord("{")
    write(os.path.join(b, "not-json.lmp"), bytes(bad_json))
    huge = bytearray(full)
    huge[8:16] = struct.pack("<Q", 1 << 62)
    write(os.path.join(b, "header-len-huge.lmp"), bytes(huge))


if __name__ == "__main__":
    main()
