#!/usr/bin/env python3
"""llm-compressor's GPTQ on the same fixture and tokens as gptq_model_diff.py:
a second opinion on the layer-output MSE (docs/gptq.md).

llm-compressor (`oneshot` with `GPTQModifier(scheme="NVFP4", targets="Linear")`,
lm_head and the MoE router ignored) runs on the CPU on the fixture; its
updated weights (fake-quantized in place, before compression) are compared
with the source on the inputs X of each linear in the unquantized model, the
metric of gptq_model_diff.py: mean((X (What - W)^T)^2).  Only the linears
gptq_model_diff.py's result file lists are counted (the ones modelopt and
calibd update), and that file's numbers are printed next to it.

Needs llmcompressor (installed from PyPI, so not a CI test):

    python llmcompressor_gptq.py --fixture-bin BUILD/tests/fixtures/calibd-fixture \
        --diff tests/modelopt/gptq_model/qwen3_moe_fused.json [--out FILE]
"""
import argparse
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_model_diff import case_fixture, gram_matrices, load_model  # noqa: E402


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture-bin", required=True)
    ap.add_argument("--diff", required=True, help="gptq_model_diff.py's result file")
    ap.add_argument("--parity-dir", default=os.path.join(here, "..", "parity"))
    ap.add_argument("--out", default="")
    args = ap.parse_args()

    import torch
    import transformers
    import llmcompressor
    from datasets import Dataset
    from llmcompressor import oneshot
    from llmcompressor.modifiers.quantization import GPTQModifier

    diff = json.load(open(args.diff))
    case = diff["case"]
    with tempfile.TemporaryDirectory() as tmp:
        fx, tokens = case_fixture(args.fixture_bin, args.parity_dir, case, tmp)
        grams = gram_matrices(torch, load_model(torch, transformers, fx), tokens)
        model = load_model(torch, transformers, fx)
        src = {k: v.clone() for k, v in model.state_dict().items()}
        ds = Dataset.from_dict({"input_ids": tokens,
                                "attention_mask": [[1] * len(t) for t in tokens]})
        recipe = GPTQModifier(scheme="NVFP4", targets="Linear",
                              ignore=["lm_head", "re:.*mlp.gate$", "re:.*shared_expert_gate$"])
        oneshot(model=model, dataset=ds, recipe=recipe, num_calibration_samples=len(tokens),
                max_seq_length=max(map(len, tokens)))
        mods = dict(model.named_modules())
        rows, tot = [], 0.0
        for r in diff["per_linear"]:
            name = r["linear"]
            g, t = grams[name]
            w = src[name + ".weight"].double()
            wh = mods[name].weight.detach().double()
            d = wh - w
            mse = float(((d @ g) * d).sum() / (t * w.shape[0]))
            tot += mse
            rows.append({"linear": name, "llmcompressor_mse": mse,
                         "modelopt_mse": r["modelopt_mse"], "calibd_mse": r["calibd_mse"]})
    n = max(len(rows), 1)
    m = diff["mean_layer_output_mse"]
    res = {"case": case, "llmcompressor": llmcompressor.__version__, "linears": len(rows),
           "mean_layer_output_mse": {"llmcompressor": tot / n, **m}, "per_linear": rows}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)
            f.write("\n")
    print("%s, %d linears: layer-output MSE llm-compressor %s %.6e, modelopt %.6e, calibd %.6e, "
          "round-to-nearest %.6e" % (case, len(rows), llmcompressor.__version__, tot / n,
                                     m["modelopt"], m["calibd"], m["rtn"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
