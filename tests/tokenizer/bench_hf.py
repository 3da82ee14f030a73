#!/usr/bin/env python3
"""Times Hugging Face `tokenizers` (Rust, one thread) on the text that
bench_tokenizer wrote with --out, for comparison with calibd's numbers.

    build/X/tests/tokenizer/bench_tokenizer --out /tmp/bench.txt
    RAYON_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
        python3 tests/tokenizer/bench_hf.py /tmp/bench.txt DIR/tokenizer.json...

Run by hand; not part of the tests.
"""
import os
import sys
import time

os.environ.setdefault("RAYON_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer  # noqa: E402

raw = open(sys.argv[1], "rb").read()
docs, i, nbytes = [], 0, 0  # nbytes: input bytes, as bench_tokenizer counts
while i < len(raw):
    nl = raw.index(b"\n", i)
    n = int(raw[i:nl])
    nbytes += n
    docs.append(raw[nl + 1:nl + 1 + n].decode("utf-8", errors="replace"))
    i = nl + 1 + n
for path in sys.argv[2:]:
    tok = Tokenizer.from_file(path)
    for mode in ("encode_batch", "encode"):
        t0 = time.perf_counter()
        if mode == "encode_batch":
            ntok = sum(len(e.ids) for e in tok.encode_batch(docs))
        else:
            ntok = sum(len(tok.encode(d).ids) for d in docs)
        dt = time.perf_counter() - t0
        print(f"{path} {mode:12s}: {nbytes / 1e6:.2f} MB in {dt:.3f} s = "
              f"{nbytes / 1e6 / dt:.2f} MB/s, {ntok / dt / 1e6:.2f} M tokens/s ({ntok} tokens)")
