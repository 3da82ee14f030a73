#!/usr/bin/env python3
"""modelopt_reference.py - the second reference for `calibd eval`: modelopt's own
fake-quantized model.

Loads the source checkpoint with transformers (CPU, its default dtype),
quantizes it with nvidia-modelopt (0.47: `load_recipe(RECIPE)`, then
`mtq.quantize` with a calibration loop over CALIB.jsonl, as hf_ptq's --recipe
flow does), runs modelopt's fake-quant forward on the held-out tokens and writes
the logits as raw bf16 [tokens, vocab] (the format of `calibd eval
--logits-out`).  modelopt calibrates its own amax here, on the same tokens as
calibd, so this checks calibd's calibration, export and quantized forward
together.

    /opt/hfenv/bin/python tests/eval/modelopt_reference.py SRC RECIPE CALIB.jsonl HELD.jsonl OUT.bf16

RECIPE: a modelopt recipe name, e.g. general/ptq/nvfp4_default-kv_fp8.
"""
import json
import sys
import types

import torch
import transformers


def main():
    src, recipe_name, calib, held, out = sys.argv[1:6]
    try:  # modelopt imports requests for dataset downloads only, which this never does
        import requests  # noqa: F401
    except ImportError:
        sys.modules["requests"] = types.ModuleType("requests")
    import modelopt.torch.quantization as mtq
    from modelopt.recipe import load_recipe

    torch.manual_seed(1234)
    config = transformers.AutoConfig.from_pretrained(src)
    cls = getattr(transformers, config.architectures[0])
    model = cls.from_pretrained(src, dtype="auto", device_map="cpu")
    model.eval()
    cfg = load_recipe(recipe_name).quantize.model_dump()
    rows = [json.loads(line)["input_ids"] for line in open(calib)]

    def loop(m):
        with torch.no_grad():
            for row in rows:
                m(input_ids=torch.tensor([row], dtype=torch.long))

    model = mtq.quantize(model, cfg, forward_loop=loop)
    with torch.no_grad(), open(out, "wb") as f:
        for line in open(held):
            ids = json.loads(line)["input_ids"]
            logits = model(input_ids=torch.tensor([ids], dtype=torch.long)).logits[0]
            f.write(logits.to(torch.bfloat16).view(torch.int16).numpy().tobytes())


if __name__ == "__main__":
    main()
