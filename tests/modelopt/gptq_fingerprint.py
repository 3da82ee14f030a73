#!/usr/bin/env python3
"""Runs real NVIDIA modelopt's GPTQ on one synthetic linear; writes a fingerprint.

The linear (rows x cols, bf16, no bias) and its calibration inputs come from
the generator that tests/modelopt/test_gptq_diff.c reproduces in C
(docs/gptq.md "Differential test"): splitmix64, u = (z >> 40) / 2^24 in
[0, 1), value = (2u - 1) * scale, rounded to bf16 (nearest even).  Weights
use stream seed, scale 0.05, and column DEAD is all zero; inputs use stream
seed + 1, scale 1, times 4 on every 11th column (outlier channels).

modelopt runs the `nvfp4_default-kv_none-gptq` recipe's quantizers
(static NVFP4 weights) with `algorithm: gptq` (perc_damp, block_size as
given; layerwise off: a single linear has no decoder layers) on the CPU.
Its static NVFP4 fake quantizer is a Triton kernel; without a GPU it is
replaced by the same arithmetic in torch (block scale from modelopt's own
compute path: amax / 6 fake-quantized to E4M3 against global_amax; values
rounded to the nearest E2M1 magnitude, ties to even; zero scale gives 0).

The fingerprint holds the updated bf16 weight (hex), the per-block and
global amax, the Hessian-weighted relative error modelopt logs and the
layer-output MSE on the calibration tokens.

    python gptq_fingerprint.py --out tests/modelopt/gptq/<name>.json \
        [--rows 64 --cols 256 --tokens 512 --seed 7 --input-quant off]
"""
import argparse
import hashlib
import json
import sys

MASK = (1 << 64) - 1


def splitmix(seed):
    s = seed & MASK
    while True:
        s = (s + 0x9E3779B97F4A7C15) & MASK
        z = s
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
        yield z ^ (z >> 31)


def gen(seed, n):
    g = splitmix(seed)
    return [((next(g) >> 40) / float(1 << 24)) * 2.0 - 1.0 for _ in range(n)]


DEAD = 5


def e2m1_round(torch, a):
    """|x| / scale to the nearest E2M1 magnitude, ties to even (modelopt's kernels)."""
    return torch.where(a <= 0.25, 0.0, torch.where(a < 0.75, 0.5, torch.where(a <= 1.25, 1.0,
           torch.where(a < 1.75, 1.5, torch.where(a <= 2.5, 2.0, torch.where(a < 3.5, 3.0,
           torch.where(a <= 5.0, 4.0, 6.0)))))))


def static_fp4_cpu(torch, scaled_e4m3_impl):
    """modelopt's static NVFP4 fake quantizer (a Triton kernel) in torch: block
    scale from its own FP8 fake quantizer, values to the nearest E2M1."""
    def fq(x, amax, global_amax=None, quantize_block_scales=True,
           fp8_max_for_normalization=448.0, out_dtype=None, pass_through_bwd=False):
        nb = amax.numel()
        bs = x.numel() // nb
        scale = amax.float() / 6.0
        if quantize_block_scales:
            g = global_amax.float() * (448.0 / fp8_max_for_normalization) / 6.0
            scale = scaled_e4m3_impl(scale, g)
        scale = scale.reshape(nb, 1)
        xf = x.contiguous().float().reshape(nb, bs)
        zero = scale == 0
        safe = torch.where(zero | torch.isnan(scale) | torch.isinf(scale), torch.ones_like(scale),
                           scale)
        r = e2m1_round(torch, xf.abs() / safe) * safe
        r = torch.where(xf >= 0, r, -r)
        r = torch.where(zero, torch.zeros_like(r), r)
        return r.reshape(x.shape).to(out_dtype or x.dtype)
    return fq


def common_args():
    """Arguments shared by the single-linear fingerprint scripts."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--rows", type=int, default=64)
    ap.add_argument("--cols", type=int, default=256)
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--seed", type=int, default=7)
    return ap


def make_linear(torch, args, dead):
    """(model, w, x, loop): the generated bf16 linear (column `dead` zero
    unless < 0), its tokens and the calibration loop over them in batches."""
    R, C, T = args.rows, args.cols, args.tokens
    w = torch.tensor(gen(args.seed, R * C), dtype=torch.float32).reshape(R, C) * 0.05
    if dead >= 0:
        w[:, dead] = 0.0
    w = w.to(torch.bfloat16)
    colscale = torch.tensor([4.0 if c % 11 == 0 else 1.0 for c in range(C)])
    x = (torch.tensor(gen(args.seed + 1, T * C), dtype=torch.float32).reshape(T, C) * colscale)
    x = x.to(torch.bfloat16)
    model = torch.nn.Sequential(torch.nn.Linear(C, R, bias=False)).to(torch.bfloat16)
    with torch.no_grad():
        model[0].weight.copy_(w)

    def loop(m):
        for b in range(0, T, args.batch):
            m(x[b:b + args.batch].unsqueeze(0))

    return model, w, x, loop


def write_fingerprint(path, fp, line):
    with open(path, "w") as f:
        json.dump(fp, f, indent=1)
        f.write("\n")
    print(line, file=sys.stderr)


def sha_bf16(torch, t):
    return hashlib.sha256(t.view(torch.int16).numpy().astype("<i2").tobytes()).hexdigest()


def main():
    ap = common_args()
    ap.add_argument("--perc-damp", type=float, default=0.01)
    ap.add_argument("--block-size", type=int, default=128)
    args = ap.parse_args()

    import torch
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.torch.quantization.nn.modules import tensor_quantizer as tq
    from modelopt.torch.quantization.tensor_quant import scaled_e4m3_impl

    tq.static_blockwise_fp4_fake_quant = static_fp4_cpu(torch, scaled_e4m3_impl)

    R, C, T = args.rows, args.cols, args.tokens
    model, w, x, loop = make_linear(torch, args, DEAD)

    fp4 = {"num_bits": (2, 1), "axis": None, "enable": True}
    cfg = {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer",
             "cfg": dict(fp4, block_sizes={-1: 16, "type": "static", "scale_bits": (4, 3)})},
        ],
        "algorithm": {"method": "gptq", "perc_damp": args.perc_damp,
                      "block_size": args.block_size, "layerwise": {"enable": False}},
    }

    mtq.quantize(model, cfg, forward_loop=loop)
    lin = model[0]
    wq = lin.weight.detach().to(torch.bfloat16).contiguous()
    wq_bytes = wq.view(torch.int16).numpy().astype("<i2").tobytes()
    amax = lin.weight_quantizer.amax.detach().float().reshape(-1).contiguous()
    gamax = float(lin.weight_quantizer.global_amax.detach().float())

    xf = x.double()
    y0 = xf @ w.double().t()
    y1 = xf @ wq.double().t()
    mse = float(((y1 - y0) ** 2).mean())
    h = 2.0 * xf.t() @ xf / T
    d = wq.double() - w.double()
    rel = float(((d @ h) * d).mean() / (((w.double() @ h) * w.double()).mean() + 1e-6))

    import transformers
    fp = {
        "versions": {"modelopt": modelopt.__version__, "torch": torch.__version__,
                     "transformers": transformers.__version__},
        "generator": {"rows": R, "cols": C, "tokens": T, "batch": args.batch, "seed": args.seed,
                      "dead_col": DEAD, "w_scale": 0.05, "x_outlier_every": 11,
                      "x_outlier_scale": 4.0},
        "algorithm": {"perc_damp": args.perc_damp, "block_size": args.block_size},
        "w_orig_sha256": sha_bf16(torch, w),
        "x_sha256": sha_bf16(torch, x),
        "weight_bf16_hex": wq_bytes.hex(),
        "weight_sha256": hashlib.sha256(wq_bytes).hexdigest(),
        "block_amax_hex": amax.numpy().astype("<f4").tobytes().hex(),
        "global_amax": gamax,
        "layer_output_mse": mse,
        "rel_err_f64": rel,
    }
    write_fingerprint(args.out, fp, f"modelopt gptq: layer-output MSE {mse:.6e}, rel err {rel:.4e}")


if __name__ == "__main__":
    main()
