#!/usr/bin/env python3
"""hf_perplexity.py - perplexity the way lm-eval computes it with its Hugging Face
back end (one forward per batch of whole sequences, the log-likelihood of every
next token, exp of the mean negative log-likelihood), through transformers on
one device, timed; the comparison point for `calibd eval` in
tests/bench/run_eval_bench.sh.

    python3 tests/bench/hf_perplexity.py --model DIR --tokens FILE.jsonl
        [--device cuda|cpu] [--batch 16] [--json OUT]

FILE.jsonl: one {"input_ids": [...]} per line (sequences of one length batch
together). Prints JSON: load_s, forward_s, tokens, perplexity.
"""
import argparse
import json
import math
import time

import torch
from transformers import AutoModelForCausalLM


def sync(dev):
    if dev.startswith("cuda"):
        torch.cuda.synchronize()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json")
    a = ap.parse_args()
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, device_map=a.device)
    model.eval()
    sync(a.device)
    res = {"load_s": time.time() - t0}
    ids = [json.loads(line)["input_ids"] for line in open(a.tokens)]
    by_len = {}
    for s in ids:
        by_len.setdefault(len(s), []).append(s)
    nll, n = 0.0, 0
    sync(a.device)
    t1 = time.time()
    with torch.no_grad():
        for seqs in by_len.values():
            for i in range(0, len(seqs), a.batch):
                x = torch.tensor(seqs[i:i + a.batch], device=a.device)
                logits = model(x).logits[:, :-1].float()
                lp = torch.log_softmax(logits, dim=-1)
                tgt = x[:, 1:]
                nll -= lp.gather(-1, tgt[..., None]).sum().item()
                n += tgt.numel()
    sync(a.device)
    res.update(forward_s=time.time() - t1, sequences=len(ids), predicted_tokens=n,
               perplexity=math.exp(nll / n), device=a.device,
               gpu=torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu")
    print(json.dumps(res, indent=1))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
