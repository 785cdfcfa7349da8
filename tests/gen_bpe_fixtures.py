#!/usr/bin/env python3
"""Makes the byte-level BPE fixtures in tests/data/bpe/ with Hugging Face `tokenizers`
(pip install tokenizers), the reference our formats/tokenizer.c BPE path must match.

  gpt2.tokenizer.json    byte-level BPE, ByteLevel pre-tokenizer (GPT-2 regex), vocab 800
  llama3.tokenizer.json  Sequence[Split(Llama-3 regex, Isolated), ByteLevel(use_regex=False)],
                         vocab 800, special tokens <|begin_of_text|> <|end_of_text|> and a
                         non-special added token <|user_tok|>
  texts.json             test texts (a list of strings)
  <name>.ids.txt         one line per text: the reference ids, space separated
  <name>.eval.npy        int32 ids of data/tinystories/eval.txt[:EVAL_BYTES] (cut at a newline)
  gpt2_prefix.ids.txt    the gpt2 ids again with ByteLevel(add_prefix_space=True)

Both are trained on a slice of tinyshakespeare. Run from the repo root:
  python3 tests/gen_bpe_fixtures.py [path/to/tinyshakespeare/input.txt]
"""
import json
import os
import struct
import sys

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = "tests/data/bpe"
TRAIN = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/data/tinyshakespeare/input.txt"
EVAL = "data/tinystories/eval.txt"
EVAL_BYTES = 24000
VOCAB = 800
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
             r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def train(pre, specials):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    with open(TRAIN, encoding="utf-8") as f:
        text = f.read()[:400_000]
    tok.train_from_iterator([text[i:i + 2000] for i in range(0, len(text), 2000)], trainer)
    return tok


def write_npy_i32(path, ids):
    header = "{'descr': '<i4', 'fortran_order': False, 'shape': (%d,), }" % len(ids)
    header += " " * (63 - (len(header) + 10) % 64) + "\n"  # 64-byte aligned, ends in \n
    with open(path, "wb") as f:
        f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode("latin1"))
        f.write(struct.pack("<%di" % len(ids), *ids))


def main():
    os.makedirs(OUT, exist_ok=True)
    with open(EVAL, "rb") as f:
        ev = f.read()
    cut = ev.rindex(b"\n", 0, EVAL_BYTES) + 1
    eval_text = ev[:cut].decode("utf-8")
    para = ev[:1500]
    para = para[:para.rindex(b"\n") + 1].decode("utf-8")

    texts = [
        para,
        "Hello world! It's a test: we'll see, they've done it, I'M SURE HE'S RIGHT.",
        "Café naïve résumé — Ærøskøbing, Straße, ñandú, Zoë; À la carte.",
        "日本語のテキストと中文字符，한국어도 있습니다。",
        "Emoji: 👍🏽 🎉🤖 ❤️ 🇫🇷 and ZWJ 👩‍👩‍👧‍👦!",
        "Digits 12345 and 3.14159, 1000000 or 007; phone +1-555-0100.",
        "a  b   c\n\n\n  d\t\te  \n\r\n   \n",
        "   leading spaces and trailing spaces   ",
        "\n",
        " ",
        "Special<|end_of_text|>in the middle <|begin_of_text|>and <|user_tok|> end<|endoftext|>",
        "x" * 50 + " " + "ab" * 30,
    ]

    gpt2 = train(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
                 ["<|endoftext|>"])
    llama3 = train(pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ]), ["<|begin_of_text|>", "<|end_of_text|>"])
    llama3.add_tokens([AddedToken("<|user_tok|>", special=False, normalized=False)])

    with open(os.path.join(OUT, "texts.json"), "w", encoding="utf-8") as f:
        json.dump(texts, f, ensure_ascii=False, indent=0)
    for name, tok in (("gpt2", gpt2), ("llama3", llama3)):
        tok.save(os.path.join(OUT, name + ".tokenizer.json"))
        with open(os.path.join(OUT, name + ".ids.txt"), "w") as f:
            for t in texts:
                enc = tok.encode(t, add_special_tokens=False)
                f.write(" ".join(str(i) for i in enc.ids) + "\n")
        write_npy_i32(os.path.join(OUT, name + ".eval.npy"),
                      tok.encode(eval_text, add_special_tokens=False).ids)
    # the same vocabulary with ByteLevel(add_prefix_space=True): the space goes in front of
    # every fragment between added tokens that does not start with one
    gpt2.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True, use_regex=True)
    with open(os.path.join(OUT, "gpt2_prefix.ids.txt"), "w") as f:
        for t in texts:
            f.write(" ".join(str(i) for i in gpt2.encode(t, add_special_tokens=False).ids) + "\n")
    with open(os.path.join(OUT, "eval_bytes.txt"), "w") as f:
        f.write("%d\n" % cut)


if __name__ == "__main__":
    main()
