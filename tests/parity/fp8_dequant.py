#!/usr/bin/env python3
"""Dequantizes an FP8 block-scaled checkpoint (quantization_config fp8) to bf16 with
transformers' own FP8 dequantization, for the parity reference of FP8 sources.

  python3 fp8_dequant.py SRC_DIR OUT_DIR

Every F8_E4M3 weight W with W_scale_inv is decoded as transformers does it
(integrations/finegrained_fp8.py, Fp8Dequantize: fp32(q) * fp32(scale), cast to
bf16).  transformers rejects shapes the scale grid does not divide; for those the
ceil-div grid rule of docs/deepseek.md is applied here, and for every divisible
tensor the same rule is checked to give transformers' bytes exactly.  OUT_DIR
gets the bf16 tensors (no *_scale_inv), config.json without quantization_config,
and the other files copied.
"""
import json, math, os, shutil, sys
import torch
from safetensors.torch import load_file, save_file
from transformers.integrations.finegrained_fp8 import Fp8Dequantize

src, out = sys.argv[1:3]
os.makedirs(out, exist_ok=True)
cfg = json.load(open(os.path.join(src, "config.json")))
bs = cfg["quantization_config"]["weight_block_size"]
hf = Fp8Dequantize(None)

def ceil_grid(q, s):
    r, c = q.shape
    full = s.repeat_interleave(bs[0], 0)[:r].repeat_interleave(bs[1], 1)[:, :c]
    return (q.to(torch.float32) * full).to(torch.bfloat16)

t = load_file(os.path.join(src, "model.safetensors"))
res, n_hf, n_own = {}, 0, 0
for k, v in t.items():
    if k.endswith("_scale_inv"):
        continue
    if v.dtype == torch.float8_e4m3fn:
        s = t[k + "_scale_inv"]
        mine = ceil_grid(v, s)
        r, c = v.shape
        if r % bs[0] == 0 and c % bs[1] == 0:
            ref = hf._dequantize_one(v, s, torch.bfloat16)
            assert torch.equal(ref.view(torch.int16), mine.view(torch.int16)), k
            res[k] = ref
            n_hf += 1
        else:
            assert s.shape == (math.ceil(r / bs[0]), math.ceil(c / bs[1])), k
            res[k] = mine
            n_own += 1
    else:
        res[k] = v
save_file(res, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
del cfg["quantization_config"]
json.dump(cfg, open(os.path.join(out, "config.json"), "w"), indent=1)
for f in os.listdir(src):
    if f not in ("config.json", "model.safetensors") and not os.path.exists(os.path.join(out, f)):
        shutil.copy(os.path.join(src, f), out)
print(f"{n_hf} tensors dequantized by transformers, {n_own} on partial grids -> {out}")
