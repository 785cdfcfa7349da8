#!/usr/bin/python3
"""Independent reference for the Hugging Face loader tests (tests/test_hf.c): builds HF model
directories by hand with numpy + json + struct only (no lmpress code, no transformers).

  make_hf.py stories MODELS_DIR OUT DTYPE [SHARDS]
      stories260K.bin + tok512.bin -> a LlamaForCausalLM directory: config.json, safetensors
      (DTYPE F32/F16/BF16; SHARDS > 1 writes model-0000i-of-0000n + index.json), tokenizer.json
      (SentencePiece-style BPE with byte fallback) and tokenizer_config.json. Q/K rows are
      permuted to HF's rotate-half order the way transformers' convert_llama_weights_to_hf
      does. For F16/BF16, OUT/expect/<our tensor name>.npy holds numpy's rounding of each
      tensor in our (llama2.c, interleaved) layout.
  make_hf.py qwen OUT
      a tiny random Qwen2ForCausalLM (q/k/v biases, untied head, byte-level BPE tokenizer
      smaller than vocab_size); OUT/expect/*.npy holds every tensor in our interleaved layout.
  make_hf.py tiny OUT TOKENIZER_JSON VOCAB_SIZE
      a minimal random LlamaForCausalLM (tied, F32) around a given tokenizer.json (e.g. the
      Hugging Face-made fixtures in tests/data/bpe/), vocab_size possibly above its size.
  make_hf.py bad GOOD_DIR SHARDED_DIR OUT
      one broken copy of a good directory per case under OUT, and OUT/cases.txt with lines
      "<case> <STATUS> <substring the error must contain>".
  make_hf.py badst OUT
      small hostile safetensors files (the committed tests/bad/safetensors/ corpus, which also
      keeps any input libFuzzer ever crashed the parser with).
  make_hf.py dumpst FILE OUT
      reads a safetensors file written by lmpress, checks the layout rules (8-byte length,
      header padded to 8, contiguous data) and saves every tensor as OUT/<name>.npy
      (float32, or int32 for I32/U8).
"""
import json
import os
import shutil
import struct
import sys

import numpy as np

ST_DTYPES = {"F32": np.float32, "F16": np.float16, "I32": np.int32, "U8": np.uint8}


def bf16_bits(a):
    """float32 -> bfloat16 bit patterns, round to nearest even (no NaNs in our data)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    return ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)


def bf16_round(a):
    return (bf16_bits(a).astype(np.uint32) << 16).view(np.float32)


def encode(a, dtype):
    """array -> (dtype name, raw little-endian bytes, the float32 value actually stored)"""
    a = np.asarray(a, dtype=np.float32)
    if dtype == "F32":
        return a.astype("<f4").tobytes(), a
    if dtype == "F16":
        h = a.astype("<f2")
        return h.tobytes(), h.astype(np.float32)
    if dtype == "BF16":
        return bf16_bits(a).astype("<u2").tobytes(), bf16_round(a)
    raise ValueError(dtype)


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype, shape, raw bytes)"""
    header, off = {}, 0
    if metadata is not None:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        off += len(raw)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for t in tensors:
            f.write(t[3])


def hf_permute(w, n_heads):
    """interleaved (llama2.c / Meta) rows -> HF rotate-half rows, as convert_llama_weights_to_hf"""
    w = np.asarray(w)
    rows = w.shape[0]
    hd = rows // n_heads
    rest = w.shape[1:]
    return w.reshape(n_heads, hd // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)


def save_npy(d, name, a):
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, name + ".npy"), np.ascontiguousarray(a))


def write_weights(out, items, dtype, shards, expect_dir, extra=()):
    """items: list of (hf name, our name, array in HF layout, array in our layout)"""
    files = [[] for _ in range(shards)]
    total = 0
    for i, (hf, ours, a_hf, a_ours) in enumerate(items):
        raw, _ = encode(a_hf, dtype)
        total += len(raw)
        files[i % shards].append((hf, dtype, a_hf.shape, raw))
        if expect_dir:
            _, stored = encode(a_ours, dtype)
            save_npy(expect_dir, ours, stored)
    for name, a in extra:
        raw, _ = encode(a, dtype)
        files[0].append((name, dtype, a.shape, raw))
    if shards == 1:
        write_safetensors(os.path.join(out, "model.safetensors"), files[0], {"format": "pt"})
        return
    wm = {}
    for s, tl in enumerate(files):
        fn = "model-%05d-of-%05d.safetensors" % (s + 1, shards)
        write_safetensors(os.path.join(out, fn), tl, {"format": "pt"})
        for t in tl:
            wm[t[0]] = fn
    with open(os.path.join(out, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": wm}, f, indent=2)


# ---- stories260K -------------------------------------------------------------------------


def read_llama2c(path):
    b = open(path, "rb").read()
    dim, hidden, nl, nh, nkv, vocab, seq = struct.unpack_from("<7i", b, 0)
    f = np.frombuffer(b, dtype="<f4", offset=28)
    hd = dim // nh
    kvd = nkv * hd
    p = 0

    def take(*shape):
        nonlocal p
        n = int(np.prod(shape))
        a = f[p:p + n].reshape(shape)
        p += n
        return a

    w = {"emb": take(abs(vocab), dim), "att_norm": take(nl, dim), "wq": take(nl, dim, dim),
         "wk": take(nl, kvd, dim), "wv": take(nl, kvd, dim), "wo": take(nl, dim, dim),
         "ffn_norm": take(nl, dim), "w1": take(nl, hidden, dim), "w2": take(nl, dim, hidden),
         "w3": take(nl, hidden, dim), "norm": take(dim)}
    cfg = dict(dim=dim, hidden=hidden, nl=nl, nh=nh, nkv=nkv, vocab=abs(vocab), seq=seq)
    return cfg, w


def read_tok512(path, n):
    b = open(path, "rb").read()
    p = 4
    toks = []
    for _ in range(n):
        score, ln = struct.unpack_from("<fi", b, p)
        p += 8
        toks.append((score, b[p:p + ln]))
        p += ln
    return toks


def spm_tokenizer(toks, metaspace):
    vocab = {}
    for i, (_, t) in enumerate(toks):
        if i == 0:
            s = "<unk>"
        elif i == 1:
            s = "<s>"
        elif i == 2:
            s = "</s>"
        else:
            s = t.decode("utf-8").replace(" ", "\u2581")
        vocab[s] = i
    # merges: split each merged piece into two earlier pieces (as SentencePiece BPE would)
    merges = []
    for s, i in sorted(vocab.items(), key=lambda kv: kv[1]):
        if i < 259 or len(s) < 2:
            continue
        best = None
        for k in range(1, len(s)):
            a, b2 = s[:k], s[k:]
            if a in vocab and b2 in vocab:
                key = max(vocab[a], vocab[b2])
                if best is None or key < best[0]:
                    best = (key, a, b2)
        if best:
            merges.append(best[1] + " " + best[2])
    added = [{"id": i, "content": c, "single_word": False, "lstrip": False, "rstrip": False,
              "normalized": False, "special": True}
             for i, c in ((0, "<unk>"), (1, "<s>"), (2, "</s>"))]
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "post_processor": {"type": "TemplateProcessing",
                             "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                                        {"Sequence": {"id": "A", "type_id": 0}}]},
          "decoder": {"type": "Sequence", "decoders": [
              {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
              {"type": "ByteFallback"}, {"type": "Fuse"},
              {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
          "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                    "continuing_subword_prefix": None, "end_of_word_suffix": None,
                    "fuse_unk": True, "byte_fallback": True, "vocab": vocab, "merges": merges}}
    if metaspace:  # newer tokenizers: Metaspace pre-tokenizer instead of a normalizer
        tj["normalizer"] = None
        tj["pre_tokenizer"] = {"type": "Metaspace", "replacement": "\u2581",
                               "prepend_scheme": "first", "split": False}
    else:  # the Llama-2 export: Prepend + Replace normalizer
        tj["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]}
        tj["pre_tokenizer"] = None
    return tj


def make_stories(models, out, dtype, shards):
    os.makedirs(out, exist_ok=True)
    c, w = read_llama2c(os.path.join(models, "stories260K.bin"))
    nh, nkv, nl = c["nh"], c["nkv"], c["nl"]
    items = [("model.embed_tokens.weight", "token_embd.weight", w["emb"], w["emb"])]
    for l in range(nl):
        L = "model.layers.%d." % l
        B = "blk.%d." % l
        items += [
            (L + "input_layernorm.weight", B + "attn_norm.weight", w["att_norm"][l], w["att_norm"][l]),
            (L + "self_attn.q_proj.weight", B + "attn_q.weight", hf_permute(w["wq"][l], nh), w["wq"][l]),
            (L + "self_attn.k_proj.weight", B + "attn_k.weight", hf_permute(w["wk"][l], nkv), w["wk"][l]),
            (L + "self_attn.v_proj.weight", B + "attn_v.weight", w["wv"][l], w["wv"][l]),
            (L + "self_attn.o_proj.weight", B + "attn_output.weight", w["wo"][l], w["wo"][l]),
            (L + "post_attention_layernorm.weight", B + "ffn_norm.weight", w["ffn_norm"][l], w["ffn_norm"][l]),
            (L + "mlp.gate_proj.weight", B + "ffn_gate.weight", w["w1"][l], w["w1"][l]),
            (L + "mlp.down_proj.weight", B + "ffn_down.weight", w["w2"][l], w["w2"][l]),
            (L + "mlp.up_proj.weight", B + "ffn_up.weight", w["w3"][l], w["w3"][l]),
        ]
    items.append(("model.norm.weight", "output_norm.weight", w["norm"], w["norm"]))
    hd = c["dim"] // nh
    inv_freq = 1.0 / (10000.0 ** (np.arange(0, hd, 2, dtype=np.float32) / hd))
    extra = [("model.layers.0.self_attn.rotary_emb.inv_freq", inv_freq)] if dtype == "F32" else []
    write_weights(out, items, dtype, shards, os.path.join(out, "expect") if dtype != "F32" else None,
                  extra)
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
           "hidden_size": c["dim"], "intermediate_size": c["hidden"],
           "num_hidden_layers": nl, "num_attention_heads": nh, "num_key_value_heads": nkv,
           "vocab_size": c["vocab"], "max_position_embeddings": c["seq"],
           "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "rope_scaling": None,
           "hidden_act": "silu", "tie_word_embeddings": True, "bos_token_id": 1,
           "eos_token_id": 2, "torch_dtype": {"F32": "float32", "F16": "float16",
                                              "BF16": "bfloat16"}[dtype],
           "attention_bias": False, "initializer_range": 0.02}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    toks = read_tok512(os.path.join(models, "tok512.bin"), c["vocab"])
    tj = spm_tokenizer(toks, metaspace=(dtype == "F16"))
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=(dtype != "BF16"), indent=1)
    if dtype != "BF16":  # BF16 run: no tokenizer_config.json, ids come from config.json
        bos = {"content": "<s>", "lstrip": False, "normalized": False, "rstrip": False,
               "single_word": False} if shards > 1 else "<s>"
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": bos,
                       "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None,
                       "legacy": False, "model_max_length": 512,
                       "tokenizer_class": "LlamaTokenizer"}, f, indent=2)


# ---- tiny Qwen2 ---------------------------------------------------------------------------

QWEN_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"
              r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) + \
        list(range(ord("\xae"), ord("\xff") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


def make_qwen(out):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(1234)
    dim, nl, nh, nkv, hd, ffn, vocab = 32, 2, 4, 2, 8, 48, 300
    b2u = bytes_to_unicode()
    tv = {b2u[b]: b for b in range(256)}
    merges = [("\u0120", "t"), ("h", "e"), ("\u0120t", "he"), ("i", "n"), ("\u0120", "a"),
              ("a", "n"), ("an", "d"), ("\u0120a", "nd")]
    for a, b in merges:
        tv[a + b] = len(tv)
    n_base = len(tv)  # 264
    added = [{"id": n_base + i, "content": c, "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": True}
             for i, c in enumerate(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])]
    tj = {"version": "1.0", "truncation": None, "padding": None, "added_tokens": added,
          "normalizer": {"type": "NFC"},
          "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
              {"type": "Split", "pattern": {"Regex": QWEN_REGEX}, "behavior": "Isolated",
               "invert": False},
              {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
               "use_regex": False}]},
          "post_processor": {"type": "ByteLevel", "add_prefix_space": False,
                             "trim_offsets": False, "use_regex": False},
          "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False,
                      "use_regex": False},
          "model": {"type": "BPE", "dropout": None, "unk_token": None,
                    "continuing_subword_prefix": "", "end_of_word_suffix": "",
                    "fuse_unk": False, "byte_fallback": False, "ignore_merges": False,
                    "vocab": tv, "merges": [[a, b] for a, b in merges]}}
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, ensure_ascii=False)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"bos_token": None, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
                   "errors": "replace", "model_max_length": 32768,
                   "tokenizer_class": "Qwen2Tokenizer"}, f)
    cfg = {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": dim,
           "intermediate_size": ffn, "num_hidden_layers": nl, "num_attention_heads": nh,
           "num_key_value_heads": nkv, "vocab_size": vocab, "max_position_embeddings": 4096,
           "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "hidden_act": "silu",
           "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 4096,
           "max_window_layers": nl, "bos_token_id": n_base, "eos_token_id": n_base + 2,
           "torch_dtype": "float32"}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)

    def r(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)

    # our (interleaved) tensors are the truth; the file gets them in HF rotate-half order
    items = [("model.embed_tokens.weight", "token_embd.weight", None, r(vocab, dim))]
    for l in range(nl):
        L, B = "model.layers.%d." % l, "blk.%d." % l
        q, k, bq, bk = r(nh * hd, dim), r(nkv * hd, dim), r(nh * hd), r(nkv * hd)
        items += [
            (L + "input_layernorm.weight", B + "attn_norm.weight", None, 1 + r(dim)),
            (L + "self_attn.q_proj.weight", B + "attn_q.weight", hf_permute(q, nh), q),
            (L + "self_attn.q_proj.bias", B + "attn_q.bias", hf_permute(bq, nh), bq),
            (L + "self_attn.k_proj.weight", B + "attn_k.weight", hf_permute(k, nkv), k),
            (L + "self_attn.k_proj.bias", B + "attn_k.bias", hf_permute(bk, nkv), bk),
            (L + "self_attn.v_proj.weight", B + "attn_v.weight", None, r(nkv * hd, dim)),
            (L + "self_attn.v_proj.bias", B + "attn_v.bias", None, r(nkv * hd)),
            (L + "self_attn.o_proj.weight", B + "attn_output.weight", None, r(dim, nh * hd)),
            (L + "post_attention_layernorm.weight", B + "ffn_norm.weight", None, 1 + r(dim)),
            (L + "mlp.gate_proj.weight", B + "ffn_gate.weight", None, r(ffn, dim)),
            (L + "mlp.up_proj.weight", B + "ffn_up.weight", None, r(ffn, dim)),
            (L + "mlp.down_proj.weight", B + "ffn_down.weight", None, r(dim, ffn)),
        ]
    items += [("model.norm.weight", "output_norm.weight", None, 1 + r(dim)),
              ("lm_head.weight", "output.weight", None, r(vocab, dim))]
    items = [(h, o, a if a is not None else b, b) for h, o, a, b in items]
    write_weights(out, items, "F32", 1, os.path.join(out, "expect"))
    # spot values of the permutation, written out explicitly for the C test's messages
    bq0 = [it for it in items if it[0] == "model.layers.0.self_attn.q_proj.bias"][0]
    save_npy(os.path.join(out, "expect"), "bq0_hf", bq0[2])


CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}\n"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def make_tiny(out, tok_json, vocab):
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(7)
    dim, ffn, nh = 16, 32, 2

    def r(*shape):
        return (rng.standard_normal(shape) * 0.1).astype(np.float32)
    L = "model.layers.0."
    items = [("model.embed_tokens.weight", r(vocab, dim)), (L + "input_layernorm.weight", r(dim)),
             (L + "self_attn.q_proj.weight", r(dim, dim)), (L + "self_attn.k_proj.weight", r(dim, dim)),
             (L + "self_attn.v_proj.weight", r(dim, dim)), (L + "self_attn.o_proj.weight", r(dim, dim)),
             (L + "post_attention_layernorm.weight", r(dim)), (L + "mlp.gate_proj.weight", r(ffn, dim)),
             (L + "mlp.up_proj.weight", r(ffn, dim)), (L + "mlp.down_proj.weight", r(dim, ffn)),
             ("model.norm.weight", r(dim))]
    write_weights(out, [(n, n, a, a) for n, a in items], "F32", 1, None)
    cfg = {"architectures": ["LlamaForCausalLM"], "hidden_size": dim, "intermediate_size": ffn,
           "num_hidden_layers": 1, "num_attention_heads": nh, "vocab_size": vocab,
           "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "tie_word_embeddings": True}
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f)
    shutil.copyfile(tok_json, os.path.join(out, "tokenizer.json"))
    # a ChatML chat template (quotes, newlines, braces: it must survive every format as is)
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"chat_template": CHATML}, f)


# ---- broken copies ------------------------------------------------------------------------


def read_st(path):
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b, 0)[0]
    return json.loads(b[8:8 + n]), b[8 + n:]


def make_bad(good, sharded, out):
    os.makedirs(out, exist_ok=True)
    cases = []

    def case(name, status, substr, base=good):
        d = os.path.join(out, name)
        shutil.rmtree(d, ignore_errors=True)
        # hard links keep this small: every edit below replaces a file (wr) instead of
        # writing into the shared inode
        shutil.copytree(base, d, ignore=shutil.ignore_patterns("expect"), copy_function=os.link)
        cases.append("%s %s %s" % (name, status, substr))
        return d

    def wr(p, data):
        if os.path.exists(p):
            os.remove(p)
        with open(p, "wb") as fh:
            fh.write(data.encode() if isinstance(data, str) else data)

    def edit_json(d, fn, f):
        p = os.path.join(d, fn)
        j = json.load(open(p, encoding="utf-8"))
        f(j)
        wr(p, json.dumps(j))

    def edit_cfg(name, status, f, substr="config.json"):
        edit_json(case(name, status, substr), "config.json", f)

    def put(j, k, v):
        j[k] = v

    edit_cfg("cfg_missing_hidden", "FORMAT", lambda j: j.pop("hidden_size"))
    edit_cfg("cfg_string_layers", "FORMAT", lambda j: put(j, "num_hidden_layers", "5"))
    edit_cfg("cfg_absurd_layers", "FORMAT", lambda j: put(j, "num_hidden_layers", 1000000000))
    edit_cfg("cfg_absurd_vocab", "FORMAT", lambda j: put(j, "vocab_size", 1e30))
    edit_cfg("cfg_float_heads", "FORMAT", lambda j: put(j, "num_attention_heads", 8.5))
    edit_cfg("cfg_zero_heads", "FORMAT", lambda j: put(j, "num_attention_heads", 0))
    edit_cfg("cfg_kv_not_divisor", "FORMAT", lambda j: put(j, "num_key_value_heads", 3))
    edit_cfg("cfg_odd_head_dim", "FORMAT", lambda j: put(j, "head_dim", 7))
    edit_cfg("cfg_bool_tie", "FORMAT", lambda j: put(j, "tie_word_embeddings", "yes"))
    edit_cfg("cfg_bad_eps", "FORMAT", lambda j: put(j, "rms_norm_eps", -1))
    edit_cfg("cfg_arch_gpt2", "UNSUPPORTED",
             lambda j: (put(j, "architectures", ["GPT2LMHeadModel"]), put(j, "model_type", "gpt2")))
    edit_cfg("cfg_rope_scaling", "UNSUPPORTED",
             lambda j: put(j, "rope_scaling", {"type": "linear", "factor": 2.0}))
    edit_cfg("cfg_gelu", "UNSUPPORTED", lambda j: put(j, "hidden_act", "gelu"))
    edit_cfg("cfg_llama_attn_bias", "UNSUPPORTED", lambda j: put(j, "attention_bias", True))
    edit_cfg("cfg_hidden_mismatch", "FORMAT", lambda j: put(j, "hidden_size", 128),
             "model.safetensors")
    d = case("cfg_not_json", "FORMAT", "config.json")
    wr(os.path.join(d, "config.json"), '{"hidden_size": 64,')
    d = case("cfg_array", "FORMAT", "config.json")
    wr(os.path.join(d, "config.json"), '[1, 2, 3]')
    d = case("cfg_absent", "IO", "config.json")
    os.remove(os.path.join(d, "config.json"))

    def edit_st(name, status, substr, f):
        d = case(name, status, substr)
        p = os.path.join(d, "model.safetensors")
        h, data = read_st(p)
        r = f(h, data)
        if r is None:
            r = struct.pack("<Q", len(json.dumps(h))) + json.dumps(h).encode() + data
        wr(p, r)

    def first_weight(h):
        return h["model.layers.0.self_attn.q_proj.weight"]

    edit_st("st_header_past_end", "FORMAT", "model.safetensors",
            lambda h, data: struct.pack("<Q", 1 << 40) + json.dumps(h).encode() + data)
    edit_st("st_truncated", "FORMAT", "model.safetensors", lambda h, data: b"\x10\x00\x00")
    edit_st("st_header_not_json", "FORMAT", "model.safetensors",
            lambda h, data: struct.pack("<Q", 6) + b"{bad: " + data)
    edit_st("st_offsets_oob", "FORMAT", "model.norm.weight",
            lambda h, data: put(h["model.norm.weight"], "data_offsets",
                                [len(data) - 4, len(data) + 252]))
    edit_st("st_end_before_begin", "FORMAT", "model.safetensors",
            lambda h, data: put(first_weight(h), "data_offsets", [100, 50]))
    edit_st("st_size_mismatch", "FORMAT", "q_proj",
            lambda h, data: put(first_weight(h), "shape", [64, 63]))
    edit_st("st_shape_overflow", "FORMAT", "q_proj",
            lambda h, data: put(first_weight(h), "shape", [2 ** 40, 2 ** 40, 2 ** 40]))
    edit_st("st_negative_shape", "FORMAT", "q_proj",
            lambda h, data: put(first_weight(h), "shape", [-64, -64]))
    edit_st("st_unknown_dtype", "UNSUPPORTED", "Q7",
            lambda h, data: put(first_weight(h), "dtype", "Q7"))
    edit_st("st_int_dtype", "UNSUPPORTED", "I32",
            lambda h, data: put(first_weight(h), "dtype", "I32"))
    edit_st("st_3d_shape", "FORMAT", "q_proj",
            lambda h, data: put(first_weight(h), "shape", [8, 8, 64]))
    edit_st("st_missing_tensor", "FORMAT", "model.safetensors",
            lambda h, data: (h.pop("model.norm.weight"), None)[1])
    edit_st("st_bad_layer", "FORMAT", "model.layers.9",
            lambda h, data: put(h, "model.layers.9.mlp.up_proj.weight", h["model.norm.weight"]))
    edit_st("st_o_bias", "UNSUPPORTED", "o_proj.bias",
            lambda h, data: put(h, "model.layers.0.self_attn.o_proj.bias", h["model.norm.weight"]))

    def pack(hb, data):
        return struct.pack("<Q", len(hb)) + hb + data

    def dup(h, data):
        extra = '"model.norm.weight": %s, ' % json.dumps(h["model.norm.weight"])
        return pack(("{" + extra + json.dumps(h)[1:]).encode(), data)
    edit_st("st_duplicate", "FORMAT", "duplicate", dup)

    def nan(h, data):
        o = first_weight(h)["data_offsets"][0]
        data = bytearray(data)
        data[o + 12:o + 16] = struct.pack("<f", float("nan"))
        return pack(json.dumps(h).encode(), bytes(data))
    edit_st("st_nan", "FORMAT", "model.safetensors", nan)

    d = case("st_absent", "IO", "model.safetensors")
    os.remove(os.path.join(d, "model.safetensors"))
    d = case("st_pickle_only", "UNSUPPORTED", "pytorch_model.bin")
    os.rename(os.path.join(d, "model.safetensors"), os.path.join(d, "pytorch_model.bin"))

    d = case("shard_missing", "IO", "model-00002-of-00003.safetensors", sharded)
    os.remove(os.path.join(d, "model-00002-of-00003.safetensors"))
    d = case("index_bad_name", "FORMAT", "model.safetensors.index.json", sharded)
    edit_json(d, "model.safetensors.index.json",
              lambda j: put(j["weight_map"], "model.norm.weight", "../model.safetensors"))
    d = case("index_wrong_shard", "FORMAT", "model.norm.weight", sharded)

    def move(j):
        wm = j["weight_map"]
        wm["model.norm.weight"] = ("model-00001-of-00003.safetensors"
                                   if wm["model.norm.weight"] != "model-00001-of-00003.safetensors"
                                   else "model-00002-of-00003.safetensors")
    edit_json(d, "model.safetensors.index.json", move)
    d = case("index_not_json", "FORMAT", "model.safetensors.index.json", sharded)
    wr(os.path.join(d, "model.safetensors.index.json"), "{")

    d = case("tok_absent", "IO", "tokenizer.json")
    os.remove(os.path.join(d, "tokenizer.json"))
    d = case("tok_not_json", "FORMAT", "tokenizer.json")
    wr(os.path.join(d, "tokenizer.json"), '{"model": ')
    d = case("tok_more_than_vocab", "FORMAT", "tokenizer.json")
    edit_json(d, "tokenizer.json", lambda j: j["added_tokens"].append(
        {"id": 512, "content": "<extra>", "special": True}))
    d = case("tok_unigram", "UNSUPPORTED", "Unigram")
    edit_json(d, "tokenizer.json", lambda j: put(j["model"], "type", "Unigram"))
    d = case("tok_bad_id", "FORMAT", "tokenizer.json")
    edit_json(d, "tokenizer.json", lambda j: put(j["model"]["vocab"], "zzz", -5))
    d = case("tok_dup_id", "FORMAT", "tokenizer.json")
    edit_json(d, "tokenizer.json", lambda j: put(j["model"]["vocab"], "zzz", 7))
    d = case("tok_no_vocab", "FORMAT", "tokenizer.json")
    edit_json(d, "tokenizer.json", lambda j: j["model"].pop("vocab"))
    d = case("tokcfg_unknown_bos", "FORMAT", "tokenizer_config.json")
    edit_json(d, "tokenizer_config.json", lambda j: put(j, "bos_token", "<bos>"))
    d = case("cfg_bos_out_of_range", "FORMAT", "config.json")
    os.remove(os.path.join(d, "tokenizer_config.json"))
    edit_json(d, "config.json", lambda j: put(j, "bos_token_id", 9999))

    with open(os.path.join(out, "cases.txt"), "w") as f:
        f.write("\n".join(cases) + "\n")


def make_badst(out):
    os.makedirs(out, exist_ok=True)

    def raw(name, b):
        with open(os.path.join(out, name), "wb") as f:
            f.write(b)

    def hdr(name, text, data=b"", hlen=None):
        h = text.encode() if isinstance(text, str) else text
        raw(name, struct.pack("<Q", len(h) if hlen is None else hlen) + h + data)

    t = '{"t":{"dtype":"F32","shape":%s,"data_offsets":%s}}'
    raw("empty_file.safetensors", b"")
    raw("short_length.safetensors", b"\x02\x00\x00")
    hdr("length_max.safetensors", "{}", hlen=2 ** 64 - 1)
    hdr("length_past_end.safetensors", "{}", hlen=3)
    hdr("length_zero.safetensors", "", b"{}")
    hdr("deep_nesting.safetensors", "[" * 5000 + "]" * 5000)
    hdr("not_object.safetensors", '"tensor"')
    hdr("trailing_garbage.safetensors", '{}  x ')
    hdr("nul_in_header.safetensors", r'{"a\u0000b":1}' + '\x00')
    hdr("bad_surrogate.safetensors", r'{"\ud800":{"dtype":"F32","shape":[],"data_offsets":[0,4]}}', b"\0" * 4)
    hdr("shape_overflow.safetensors", t % ("[4294967296,4294967296,4294967296]", "[0,4]"), b"\0" * 4)
    hdr("shape_float.safetensors", t % ("[1.5]", "[0,4]"), b"\0" * 4)
    hdr("shape_huge_number.safetensors", t % ("[1e400]", "[0,4]"), b"\0" * 4)
    hdr("offsets_past_end.safetensors", t % ("[1]", "[0,4]"))
    hdr("offsets_reversed.safetensors", t % ("[1]", "[4,0]"), b"\0" * 4)
    hdr("offsets_negative.safetensors", t % ("[1]", "[-4,0]"), b"\0" * 4)
    hdr("offsets_three.safetensors", t % ("[1]", "[0,4,8]"), b"\0" * 8)
    hdr("size_mismatch.safetensors", t % ("[3]", "[0,8]"), b"\0" * 8)
    hdr("dtype_unknown.safetensors", t.replace("F32", "F33") % ("[1]", "[0,4]"), b"\0" * 4)
    hdr("duplicate_name.safetensors", r'{"t\n":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},'
        r'"t\n":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4)
    hdr("entry_not_object.safetensors", '{"t":[1,2,3]}')
    # well-formed oddities that must load: zero-size tensor with a huge dimension, a scalar
    hdr("ok_zero_size_huge_dim.safetensors", t % ("[0,9007199254740992]", "[0,0]"))
    hdr("ok_scalar_f16.safetensors", t.replace("F32", "F16") % ("[]", "[0,2]"), b"\x00\x3c")


# ---- reading what lmpress wrote -----------------------------------------------------------


def dump_st(path, out):
    b = open(path, "rb").read()
    n = struct.unpack_from("<Q", b, 0)[0]
    assert n % 8 == 0, "header not padded to 8 bytes"
    h = json.loads(b[8:8 + n])
    data = b[8 + n:]
    spans = []
    for name, e in h.items():
        if name == "__metadata__":
            assert all(isinstance(v, str) for v in e.values())
            continue
        s, t = e["data_offsets"]
        spans.append((s, t))
        raw = data[s:t]
        shape = tuple(e["shape"])
        if e["dtype"] == "BF16":
            a = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            a = np.frombuffer(raw, np.dtype(ST_DTYPES[e["dtype"]]).newbyteorder("<"))
        assert a.size == int(np.prod(shape)), name
        a = a.reshape(shape)
        a = a.astype(np.int32) if e["dtype"] in ("I32", "U8") else a.astype(np.float32)
        save_npy(out, name, a)
    spans.sort()
    pos = 0
    for s, t in spans:
        assert s == pos, "data not contiguous"
        pos = t
    assert pos == len(data), "data section has trailing bytes"
    print("ok", len(spans), "tensors")


def main():
    a = sys.argv[1:]
    if a[0] == "stories":
        make_stories(a[1], a[2], a[3], int(a[4]) if len(a) > 4 else 1)
    elif a[0] == "qwen":
        make_qwen(a[1])
    elif a[0] == "tiny":
        make_tiny(a[1], a[2], int(a[3]))
    elif a[0] == "bad":
        make_bad(a[1], a[2], a[3])
    elif a[0] == "badst":
        make_badst(a[1])
    elif a[0] == "dumpst":
        dump_st(a[1], a[2])
    else:
        sys.exit("unknown command " + a[0])


if __name__ == "__main__":
    main()
