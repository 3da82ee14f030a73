#!/usr/bin/env python3
"""Runs real NVIDIA modelopt's AWQ-lite on one synthetic linear; writes a fingerprint.

The linear and its tokens come from the generator of gptq_fingerprint.py
(docs/awq.md).  modelopt quantizes it with INT4 weights in blocks of 128
(int4_awq's weight quantizer; inputs unquantized) and
`algorithm: {method: awq_lite, alpha_step}` on the CPU.  The fingerprint
holds the loss of every alpha of the search, the chosen alpha, the bf16
pre_quant_scale, the folded bf16 weight and its per-block amax.

    python awq_fingerprint.py --out tests/modelopt/awq/<name>.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_fingerprint import (DEAD, common_args, make_linear, sha_bf16,  # noqa: E402
                              write_fingerprint)


def main():
    ap = common_args()
    ap.add_argument("--alpha-step", type=float, default=0.1)
    args = ap.parse_args()

    import torch
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization import model_calib

    model, w, x, loop = make_linear(torch, args, DEAD)
    seen = {}
    orig = model_calib.apply_pre_quant_scale_and_smooth

    def capture(linear, pre_quant_scale=None):
        seen["loss"] = {repr(float(k)): float(v) for k, v in linear.awq_lite.loss.items()}
        seen["best_alpha"] = float(linear.awq_lite.best_alpha)
        return orig(linear, pre_quant_scale)

    model_calib.apply_pre_quant_scale_and_smooth = capture
    cfg = {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer",
             "cfg": {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True}},
        ],
        "algorithm": {"method": "awq_lite", "alpha_step": args.alpha_step},
    }
    mtq.quantize(model, cfg, forward_loop=loop)
    lin = model[0]

    def bf16hex(t):
        return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).reshape(-1).numpy().astype("<i2").tobytes().hex()

    fp = {
        "versions": {"modelopt": modelopt.__version__, "torch": torch.__version__},
        "generator": {"rows": args.rows, "cols": args.cols, "tokens": args.tokens,
                      "batch": args.batch, "seed": args.seed, "dead_col": DEAD},
        "alpha_step": args.alpha_step,
        "w_orig_sha256": sha_bf16(torch, w),
        "loss": seen["loss"],
        "best_alpha": seen["best_alpha"],
        "pre_quant_scale_bf16_hex": bf16hex(lin.input_quantizer.pre_quant_scale),
        "weight_bf16_hex": bf16hex(lin.weight),
        "weight_amax_f32_hex": lin.weight_quantizer.amax.detach().float().reshape(-1).numpy().astype("<f4").tobytes().hex(),
    }
    write_fingerprint(args.out, fp, f"modelopt awq_lite: best alpha {fp['best_alpha']}")


if __name__ == "__main__":
    main()
