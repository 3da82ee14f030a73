#!/usr/bin/env python3
"""transformers' own dequantization of an MXFP4 gpt_oss checkpoint, for the parity test.

  python3 mxfp4_dequant_ref.py MODEL_DIR OUT_DIR

Loads the checkpoint with transformers (on a machine without its MXFP4 kernels transformers
dequantizes the experts to bf16 at load; Mxfp4Config(dequantize=True) forces that elsewhere) and
writes OUT_DIR/dequant.safetensors: every layer's experts.gate_up_proj [E, H, 2I] and
experts.down_proj [E, I, H] parameter as transformers holds them (bf16, input x output).
test_parity.c decodes the fixture's *_blocks / *_scales as calibd does and compares bytes.
"""
import os
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, Mxfp4Config

model_dir, out_dir = sys.argv[1:3]
os.makedirs(out_dir, exist_ok=True)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16,
                                             quantization_config=Mxfp4Config(dequantize=True))
out = {}
for name, p in model.named_parameters():
    if name.endswith(".experts.gate_up_proj") or name.endswith(".experts.down_proj"):
        assert p.dtype == torch.bfloat16 and p.dim() == 3, (name, p.dtype, p.shape)
        out[name] = p.detach().cpu().contiguous()
save_file(out, os.path.join(out_dir, "dequant.safetensors"))
print(f"{len(out)} dequantized expert tensors -> {out_dir}")
