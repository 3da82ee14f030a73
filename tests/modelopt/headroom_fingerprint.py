#!/usr/bin/env python3
"""Runs real NVIDIA modelopt's nvfp4_act_headroom on one synthetic linear; writes a fingerprint.

The linear and its tokens come from the generator of gptq_fingerprint.py;
token t is then scaled by 2^((t % 29) - 14) (exact in bf16) so the
per-block amaxes span about 2^28, and every 37th token is zero (all-zero
blocks are not counted).  modelopt quantizes it with NVFP4 dynamic weights
and inputs (block 16) and `algorithm: {method: nvfp4_act_headroom,
anchor_percentile, upper_percentile, rho}` on the CPU, the tokens in
batches.  The fingerprint holds the input quantizer's amax (fp32 hex):
calibd's histogram op and rule must give the same bits (docs/numerics.md
"Activation headroom").

    python headroom_fingerprint.py --out tests/modelopt/headroom/<name>.json \
        [--anchor 1 --upper 99.99 --rho 16384]
"""
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_fingerprint import (DEAD, common_args, make_linear, sha_bf16,  # noqa: E402
                              write_fingerprint)


def main():
    ap = common_args()
    ap.add_argument("--anchor", type=float, default=1.0)
    ap.add_argument("--upper", type=float, default=99.99)
    ap.add_argument("--rho", type=float, default=16384.0)
    args = ap.parse_args()

    import torch
    import modelopt
    import modelopt.torch.quantization as mtq

    model, w, x, _ = make_linear(torch, args, DEAD)
    T = args.tokens
    scale = torch.tensor([0.0 if t % 37 == 0 else 2.0 ** ((t % 29) - 14) for t in range(T)])
    x = (x.float() * scale[:, None]).to(torch.bfloat16)

    def loop(m):
        for b in range(0, T, args.batch):
            m(x[b:b + args.batch].unsqueeze(0))

    nvfp4 = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic", "scale_bits": (4, 3)}}
    cfg = {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer", "cfg": nvfp4},
            {"quantizer_name": "*input_quantizer", "cfg": nvfp4},
        ],
        "algorithm": {"method": "nvfp4_act_headroom", "anchor_percentile": args.anchor,
                      "upper_percentile": args.upper, "rho": args.rho},
    }
    mtq.quantize(model, cfg, forward_loop=loop)
    amax = model[0].input_quantizer.amax.float().reshape(-1)
    assert amax.numel() == 1
    a = float(amax[0])
    fp = {
        "versions": {"modelopt": modelopt.__version__, "torch": torch.__version__},
        "generator": {"rows": args.rows, "cols": args.cols, "tokens": T, "batch": args.batch,
                      "seed": args.seed, "dead_col": DEAD, "token_scale": "2^((t%29)-14), 0 if t%37==0"},
        "algorithm": {"anchor_percentile": args.anchor, "upper_percentile": args.upper,
                      "rho": args.rho},
        "w_orig_sha256": sha_bf16(torch, w),
        "x_scaled_sha256": sha_bf16(torch, x),
        "input_amax_f32_hex": struct.pack("<f", a).hex(),
        "input_amax_f32": a,
        "max_f32": float(x.float().abs().max()),
    }
    write_fingerprint(args.out, fp, f"{args.out}: input amax {a!r} (max {fp['max_f32']!r})")


if __name__ == "__main__":
    main()
