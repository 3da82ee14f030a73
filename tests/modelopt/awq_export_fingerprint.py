#!/usr/bin/env python3
"""Runs real NVIDIA modelopt's AWQ export fold on a group of linears that
share one input; writes a fingerprint (docs/awq.md "Export").

A norm (bf16 weight) feeds `--group` linears (q/k/v-like: rows 64, 32, 32
by default, inputs `--cols`); modelopt quantizes them with int4_awq's
weight quantizer (INT4, blocks of 128) and `awq_lite` on the CPU, so each
linear gets its own pre_quant_scale.  Then the two export steps modelopt's
unified HF export runs on such a group:

  preprocess_linear_fusion(group)       the average pre_quant_scale, every
                                        weight re-folded to it, block amax
                                        re-taken;
  fuse_prequant_layernorm(norm, group)  the norm's weight times it; the
                                        linears lose their pre_quant_scale.

The fingerprint holds the state before (each linear's pre_quant_scale,
weight) and after (the shared pre_quant_scale, each weight and its block
amax, the norm's weight), so the C test can recompute the fold from the
state before and compare bytes.  `--plus-one` names the norm class
GemmaRMSNorm: modelopt folds into (1 + weight) then.  `--smoothquant ALPHA`
uses int8_sq's quantizers (INT8 per-channel weights, INT8 per-tensor
inputs) and `smoothquant`: the exporter resmooths the group the same way
(weight amax per output channel; the group's input amax becomes their
max) but fuses nothing into the norm (docs/smoothquant.md "Export").

    python awq_export_fingerprint.py --out tests/modelopt/awq_export/<name>.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_fingerprint import gen, write_fingerprint  # noqa: E402
from smoothquant_fingerprint import sq_cfg  # noqa: E402


def main():
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", default="64,32,32")
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--plus-one", action="store_true")
    ap.add_argument("--smoothquant", type=float, default=None, metavar="ALPHA",
                    help="int8_sq's quantizers and smoothquant(alpha) instead of int4_awq's")
    args = ap.parse_args()

    import torch
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export.quant_utils import fuse_prequant_layernorm, preprocess_linear_fusion

    rows = [int(r) for r in args.rows.split(",")]
    C, T = args.cols, args.tokens

    class RMSNorm(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.ones(C))

        def forward(self, x):
            return x * self.weight

    class GemmaRMSNorm(RMSNorm):
        pass

    class Group(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = GemmaRMSNorm() if args.plus_one else RMSNorm()
            self.lin = torch.nn.ModuleList(torch.nn.Linear(C, r, bias=False) for r in rows)

        def forward(self, x):
            h = self.norm(x)
            return torch.cat([m(h) for m in self.lin], dim=-1)

    model = Group().to(torch.bfloat16)
    with torch.no_grad():
        nw = torch.tensor(gen(args.seed, C)) * 0.5 + (0.0 if args.plus_one else 1.0)
        model.norm.weight.copy_(nw.to(torch.bfloat16))
        for i, m in enumerate(model.lin):
            w = torch.tensor(gen(args.seed + 10 + i, rows[i] * C)).reshape(rows[i], C) * 0.05
            m.weight.copy_(w.to(torch.bfloat16))
    colscale = torch.tensor([4.0 if c % 13 == 0 else 1.0 for c in range(C)])
    x = (torch.tensor(gen(args.seed + 1, T * C)).reshape(T, C) * colscale).to(torch.bfloat16)

    def loop(m):
        for b in range(0, T, args.batch):
            m(x[b:b + args.batch].unsqueeze(0))

    cfg = {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer",
             "cfg": {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True}},
        ],
        "algorithm": {"method": "awq_lite", "alpha_step": 0.1},
    }
    if args.smoothquant is not None:
        cfg = sq_cfg(args.smoothquant)
    mtq.quantize(model, cfg, forward_loop=loop)

    def bf16hex(t):
        return (t.detach().to(torch.bfloat16).contiguous().view(torch.int16).reshape(-1)
                .numpy().astype("<i2").tobytes().hex())

    def f32hex(t):
        return t.detach().float().reshape(-1).numpy().astype("<f4").tobytes().hex()

    lins = list(model.lin)
    sq = args.smoothquant is not None
    before = [{"rows": r, "pre_quant_scale_bf16_hex": bf16hex(m.input_quantizer.pre_quant_scale),
               "weight_bf16_hex": bf16hex(m.weight)} for r, m in zip(rows, lins)]
    if sq:
        for b, m in zip(before, lins):
            b["input_amax_f32_hex"] = f32hex(m.input_quantizer.amax)
    norm_before = bf16hex(model.norm.weight)
    with torch.no_grad():
        preprocess_linear_fusion(lins)
        shared = bf16hex(lins[0].input_quantizer.pre_quant_scale)
        assert all(bf16hex(m.input_quantizer.pre_quant_scale) == shared for m in lins)
        if not sq:  # the exporter fuses into the norm for awq formats only
            fuse_prequant_layernorm(model.norm, lins)
    after = [{"weight_bf16_hex": bf16hex(m.weight),
              "weight_amax_f32_hex": f32hex(m.weight_quantizer.amax)} for m in lins]
    if sq:
        for a, m in zip(after, lins):
            a["input_amax_f32_hex"] = f32hex(m.input_quantizer.amax)
    fp = {
        "versions": {"modelopt": modelopt.__version__, "torch": torch.__version__},
        "generator": {"rows": rows, "cols": C, "tokens": T, "batch": args.batch,
                      "seed": args.seed},
        "plus_one": bool(args.plus_one),
        "algorithm": "smoothquant" if sq else "awq_lite",
        "amax_block": C if sq else 128,
        "before": before,
        "norm_before_bf16_hex": norm_before,
        "pre_quant_scale_bf16_hex": shared,
        "after": after,
        "norm_after_bf16_hex": bf16hex(model.norm.weight),
        "pre_quant_scale_left": not sq and any(getattr(m.input_quantizer, "_pre_quant_scale", None)
                                    is not None for m in lins),
    }
    write_fingerprint(args.out, fp, f"modelopt {fp['algorithm']} export fold: {len(rows)} "
                      f"linears, plus_one={args.plus_one}")


if __name__ == "__main__":
    main()
