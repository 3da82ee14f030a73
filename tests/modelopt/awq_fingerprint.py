#!/usr/bin/env python3
"""Runs real NVIDIA modelopt's AWQ-lite on one synthetic linear; writes a fingerprint.

The linear and its tokens come from the generator of gptq_fingerprint.py
(docs/awq.md).  modelopt quantizes it with INT4 weights in blocks of 128
(int4_awq's weight quantizer; inputs unquantized) and
`algorithm: {method: awq_lite, alpha_step}` on the CPU.  The fingerprint
holds the loss of every alpha of the search, the chosen alpha, the bf16
pre_quant_scale, the folded bf16 weight and its per-block amax.

With --nvfp4 it runs nvfp4_awq's quantizers instead (NVFP4 weights and
inputs, W4A4: the search's fake quantizer is NVFP4, modelopt's Triton
kernel replaced by the same arithmetic in torch, gptq_model_diff.py's
patch_modelopt_cpu, and fp32 sqrt made correctly rounded as on a GPU,
patch_ieee_sqrt); the weight amax is then the per-tensor one and the
fingerprint adds the input quantizer's amax after the fold.

With --w4a8 it runs w4a8_awq's quantizers (W4A8_AWQ_BETA_CFG: the
sequential [INT4 blocks, FP8 per tensor] weight quantizer, FP8 inputs); the
search is the INT4 one, and the fingerprint adds the input amax after the
fold and the FP8 stage's amax.

With --full it runs `awq_full`: awq_lite, then modelopt's awq_clip
(docs/awq.md "awq_full"); the fingerprint adds the clip ratios, each
ratio's loss (per block; NVFP4: per tensor), the weight amax before the
clip and its dtype, and the clipped amax (the weight quantizer's amax, the
exported one).  With --clip-only it runs `awq_clip` alone (no scale
search, no pre_quant_scale; docs/awq.md "awq_clip").  Both combine with
--nvfp4 and --w4a8.

With --bias S the linear has a bias (GPT-OSS's attention; docs/awq.md
"GPT-OSS"), bf16 of S times the generator's values of seed + 2; the search
runs the whole linear, so both outputs carry it inside their rounding.
The fingerprint adds it (bias_bf16_hex).

    python awq_fingerprint.py [--nvfp4 | --w4a8] [--full | --clip-only] [--bias S]
        [--min-clip-ratio R] [--shrink-step S] [--max-tokens N]
        --out tests/modelopt/awq/<name>.json
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_fingerprint import (DEAD, common_args, gen, make_linear, sha_bf16,  # noqa: E402
                              write_fingerprint)


def main():
    ap = common_args()
    ap.add_argument("--alpha-step", type=float, default=0.1)
    ap.add_argument("--nvfp4", action="store_true", help="nvfp4_awq's W4A4 NVFP4 quantizers")
    ap.add_argument("--full", action="store_true", help="awq_full: awq_lite then awq_clip")
    ap.add_argument("--clip-only", action="store_true", help="awq_clip alone (no scale search)")
    ap.add_argument("--w4a8", action="store_true", help="w4a8_awq's INT4-then-FP8 quantizers")
    ap.add_argument("--min-clip-ratio", type=float, default=0.5)
    ap.add_argument("--shrink-step", type=float, default=0.05)
    ap.add_argument("--max-tokens", type=int, default=64, help="max_tokens_per_batch")
    ap.add_argument("--bias", type=float, default=0.0, help="a bias of this scale (0: none)")
    args = ap.parse_args()

    import torch
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization import model_calib

    model, w, x, loop = make_linear(torch, args, DEAD)
    bias = None
    if args.bias:
        bias = (torch.tensor(gen(args.seed + 2, args.rows)) * args.bias).to(torch.bfloat16)
        lin0 = torch.nn.Linear(args.cols, args.rows, bias=True).to(torch.bfloat16)
        with torch.no_grad():
            lin0.weight.copy_(w)
            lin0.bias.copy_(bias)
        model[0] = lin0
    seen = {}
    orig = model_calib.apply_pre_quant_scale_and_smooth

    def capture(linear, pre_quant_scale=None):
        seen["loss"] = {repr(float(k)): float(v) for k, v in linear.awq_lite.loss.items()}
        seen["best_alpha"] = float(linear.awq_lite.best_alpha)
        return orig(linear, pre_quant_scale)

    model_calib.apply_pre_quant_scale_and_smooth = capture
    if args.clip_only:
        args.full = True
    wcfg = {"num_bits": 4, "block_sizes": {-1: 128, "type": "static"}, "enable": True}
    quant = [{"quantizer_name": "*", "enable": False}]
    if args.nvfp4:
        from gptq_model_diff import patch_ieee_sqrt, patch_modelopt_cpu
        patch_modelopt_cpu(torch)
        patch_ieee_sqrt(torch)
        wcfg = {"num_bits": (2, 1), "block_sizes": {-1: 16, "type": "dynamic",
                                                   "scale_bits": (4, 3)}, "enable": True}
        quant.append({"quantizer_name": "*input_quantizer", "cfg": dict(wcfg)})
    if args.w4a8:
        fp8 = {"num_bits": (4, 3), "enable": True}
        wcfg = [wcfg, dict(fp8)]
        quant.append({"quantizer_name": "*input_quantizer", "cfg": dict(fp8)})
    quant.append({"quantizer_name": "*weight_quantizer", "cfg": wcfg})
    algo = {"method": "awq_lite", "alpha_step": args.alpha_step}
    if args.full:
        algo = {"method": "awq_clip" if args.clip_only else "awq_full", "alpha_step": args.alpha_step, "debug": True,
                "min_clip_ratio": args.min_clip_ratio, "shrink_step": args.shrink_step,
                "max_tokens_per_batch": args.max_tokens}
        if args.clip_only:  # awq_clip has no alpha_step
            del algo["alpha_step"]
    cfg = {"quant_cfg": quant, "algorithm": algo}
    mtq.quantize(model, cfg, forward_loop=loop)
    lin = model[0]

    def bf16hex(t):
        return t.detach().to(torch.bfloat16).contiguous().view(torch.int16).reshape(-1).numpy().astype("<i2").tobytes().hex()

    fp = {
        "versions": {"modelopt": modelopt.__version__, "torch": torch.__version__},
        "generator": {"rows": args.rows, "cols": args.cols, "tokens": args.tokens,
                      "batch": args.batch, "seed": args.seed, "dead_col": DEAD},
        "alpha_step": args.alpha_step,
        "weight_format": "nvfp4" if args.nvfp4 else "w4a8" if args.w4a8 else "int4",
        "w_orig_sha256": sha_bf16(torch, w),
        "weight_bf16_hex": bf16hex(lin.weight),
    }
    if bias is not None:
        fp["bias_bf16_hex"] = bf16hex(bias)
    if not args.clip_only:
        fp["loss"] = seen["loss"]
        fp["best_alpha"] = seen["best_alpha"]
        fp["pre_quant_scale_bf16_hex"] = bf16hex(lin.input_quantizer.pre_quant_scale)
    wq = lin.weight_quantizer[0] if args.w4a8 else lin.weight_quantizer
    fp["weight_amax_f32_hex"] = wq.amax.detach().float().reshape(-1).numpy().astype("<f4").tobytes().hex()
    if args.nvfp4 or args.w4a8:
        fp["input_amax_f32_hex"] = lin.input_quantizer.amax.detach().float().reshape(-1).numpy().astype("<f4").tobytes().hex()
    if args.w4a8:  # the FP8 stage's amax
        fp["weight_amax2_f32_hex"] = lin.weight_quantizer[1].amax.detach().float().reshape(-1).numpy().astype("<f4").tobytes().hex()
    if args.full:
        def f32hex(t):
            return t.detach().float().contiguous().reshape(-1).numpy().astype("<f4").tobytes().hex()
        clip = lin.awq_clip
        fp["clip"] = {"min_clip_ratio": args.min_clip_ratio, "shrink_step": args.shrink_step,
                      "max_tokens_per_batch": args.max_tokens, "num_tokens": int(clip.num_tokens),
                      "ratios": [float(k) for k in clip.loss],
                      "loss_f32_hex": [f32hex(v) for v in clip.loss.values()],
                      "w_amax_f32_hex": f32hex(clip.w_amax),
                      "w_amax_dtype": str(clip.w_amax.dtype).replace("torch.", "")}
    write_fingerprint(args.out, fp, f"modelopt {algo['method']}: best alpha {fp.get('best_alpha')}")


if __name__ == "__main__":
    main()
