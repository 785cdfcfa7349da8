#!/usr/bin/python3
"""Greedy completion of PROMPT (special tokens parsed) by llama.cpp (llama-cpp-python) from a
GGUF file, for bench/smollm2.sh: compares what llama.cpp makes of our exports with what
`lmpress run` generates.   llamacpp_sample.py FILE.gguf N PROMPT..."""
import sys

from llama_cpp import Llama

llm = Llama(model_path=sys.argv[1], n_ctx=512, verbose=False, n_threads=2)
for prompt in sys.argv[3:]:
    out = llm.create_completion(prompt, max_tokens=int(sys.argv[2]), temperature=0)
    print(prompt.replace("<|im_start|>", "").replace("<|im_end|>", "").rstrip("\n"))
    print(out["choices"][0]["text"].strip("\n"))
