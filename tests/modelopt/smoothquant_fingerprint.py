#!/usr/bin/env python3
"""Runs real NVIDIA modelopt's SmoothQuant on one synthetic linear; writes a fingerprint.

The linear and its tokens come from the generator of gptq_fingerprint.py
(docs/smoothquant.md).  modelopt quantizes it with the int8_smoothquant
preset's quantizers (INT8 per-output-channel weights, INT8 per-tensor
inputs) and `algorithm: {method: smoothquant, alpha}` on the CPU.  The
fingerprint holds the folded bf16 weight, the bf16 pre_quant_scale, the
per-channel activation amax, the weight amax per output channel and the
input amax, as hex of their raw bytes.

    python smoothquant_fingerprint.py --out tests/modelopt/smoothquant/<name>.json [--alpha 1.0]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_fingerprint import (DEAD, common_args, make_linear, sha_bf16,  # noqa: E402
                              write_fingerprint)


def sq_cfg(alpha):
    """int8_sq's quantizers (INT8 per-channel weights, INT8 per-tensor
    inputs) with modelopt's smoothquant at migration strength alpha."""
    return {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer", "cfg": {"num_bits": 8, "axis": 0}},
            {"quantizer_name": "*input_quantizer", "cfg": {"num_bits": 8, "axis": None}},
        ],
        "algorithm": {"method": "smoothquant", "alpha": alpha},
    }


def main():
    ap = common_args()
    ap.add_argument("--alpha", type=float, default=1.0)
    ap.add_argument("--dead", type=int, default=DEAD,
                    help="all-zero weight column, -1 for none (modelopt 0.47 raises "
                         "IndexError on one when alpha < 1)")
    args = ap.parse_args()

    import torch
    import modelopt
    import modelopt.torch.quantization as mtq

    R, C, T = args.rows, args.cols, args.tokens
    model, w, x, loop = make_linear(torch, args, args.dead)
    cfg = sq_cfg(args.alpha)
    mtq.quantize(model, cfg, forward_loop=loop)
    lin = model[0]

    def hexof(t, dt):
        return t.detach().contiguous().reshape(-1).numpy().astype(dt).tobytes().hex()

    def bf16hex(t):
        return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).reshape(-1).numpy().astype("<i2").tobytes().hex()

    iq, wq = lin.input_quantizer, lin.weight_quantizer
    fp = {
        "versions": {"modelopt": modelopt.__version__, "torch": torch.__version__},
        "generator": {"rows": R, "cols": C, "tokens": T, "batch": args.batch, "seed": args.seed,
                      "dead_col": args.dead},
        "alpha": args.alpha,
        "w_orig_sha256": sha_bf16(torch, w),
        "weight_bf16_hex": bf16hex(lin.weight),
        "pre_quant_scale_dtype": str(iq.pre_quant_scale.dtype),
        "pre_quant_scale_bf16_hex": bf16hex(iq.pre_quant_scale),
        "act_amax_f32_hex": hexof(iq._amax_for_smoothing.float(), "<f4"),
        "input_amax_dtype": str(iq.amax.dtype),
        "input_amax_f32": float(iq.amax.float()),
        "weight_amax_dtype": str(wq.amax.dtype),
        "weight_amax_f32_hex": hexof(wq.amax.float(), "<f4"),
    }
    write_fingerprint(args.out, fp, f"modelopt smoothquant alpha {args.alpha}: "
                      f"input amax {fp['input_amax_f32']}")


if __name__ == "__main__":
    main()
