#!/usr/bin/env python3
"""GPTQ of a whole tiny model: real modelopt 0.47 vs calibd (docs/gptq.md).

Runs the `nvfp4_default-kv_none-gptq` recipe on a fixture (calibd-fixture,
the parity case's arch, layout and seed) with the parity case's tokens:

  * modelopt: hf_ptq's --recipe flow (mtq.quantize with the recipe's
    quantize section, a forward loop over the token rows, then
    export_hf_checkpoint), on the CPU.  Its NVFP4 fake quantizers are
    Triton / CUDA kernels; they are replaced by the same arithmetic in torch
    (static weights: tests/modelopt/gptq_fingerprint.py; dynamic inputs:
    the Triton kernel's, scale = e4m3(bmax / (6 g)) g with g = amax / 2688,
    values to the nearest E2M1 magnitude);
  * calibd: `calibd quantize --device cpu --div exact` (modelopt on the
    CPU divides exactly) with the same recipe file and tokens;
  * round to nearest (no GPTQ): `calibd quantize` with the recipe's
    algorithm switched to max.

For every linear GPTQ updates (attention q/k/v/o, MLA's q_a/q_b/kv_a/kv_b,
Gated DeltaNet's in_proj / out_proj, dense and shared-expert MLPs) the exported
weight is dequantized (E2M1 x E4M3 weight_scale x weight_scale_2) and
compared with the source weight W on the inputs X of that linear in the
unquantized model on the same tokens: layer-output MSE
mean((X (What - W)^T)^2) = tr(dW G dW^T) / (T rows), G = X^T X.  Also the
share of the 4-bit codes that differ between calibd's and modelopt's
exports.  Writes the result (and modelopt's per-linear code hashes) to
--out; exits 1 when calibd's mean MSE is worse than modelopt's by more than
--tolerance (a share; default 0).

    python gptq_model_diff.py --calibd BUILD/daemon/calibd \
        --fixture-bin BUILD/tests/fixtures/calibd-fixture \
        [--case qwen3_moe_fused] --out tests/modelopt/gptq_model/qwen3_moe_fused.json
"""
import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_fingerprint import e2m1_round, static_fp4_cpu  # noqa: E402
from model_diff_common import count_codes  # noqa: E402

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]


def patch_modelopt_cpu(torch):
    from modelopt.torch.quantization.nn.modules import tensor_quantizer as tq
    from modelopt.torch.quantization.tensor_quant import scaled_e4m3_impl

    def dynamic_fp4_cpu(inputs, block_size, amax, bias, num_bits, scale_bits, *rest):
        assert block_size == 16 and num_bits == (2, 1), (block_size, num_bits)
        shape, dt = inputs.shape, inputs.dtype
        x = inputs.reshape(-1, 16).float()
        g = amax.float().reshape(()) / (6.0 * 448.0)
        g = torch.where(g > 0, g, torch.full_like(g, 1e-12))
        bmax = x.abs().amax(dim=1, keepdim=True)
        s = torch.clamp(bmax / (6.0 * g), max=448.0).to(torch.float8_e4m3fn).float() * g
        s = torch.where(s >= 1e-5, s, torch.ones_like(s))
        r = e2m1_round(torch, x.abs() / s) * s
        r = torch.where(x >= 0, r, -r)
        return r.reshape(shape).to(dt)

    tq.static_blockwise_fp4_fake_quant = static_fp4_cpu(torch, scaled_e4m3_impl)
    tq.dynamic_block_quant = dynamic_fp4_cpu


def patch_ieee_sqrt(torch):
    """fp32 pow(x, 0.5) and sqrt correctly rounded (docs/awq.md "NVFP4"):
    this CPU build of torch (AVX2) returns some of them one ulp off, where a
    GPU's IEEE sqrt, and calibd's, do not; awq_lite's scale uses both."""
    pow0, sqrt0 = torch.Tensor.pow, torch.Tensor.sqrt

    def pow_(self, e, *a, **k):
        if not a and not k and isinstance(e, float) and e == 0.5 and self.dtype == torch.float32:
            return self.double().sqrt().float()
        return pow0(self, e, *a, **k)

    def sqrt_(self):
        return self.double().sqrt().float() if self.dtype == torch.float32 else sqrt0(self)

    torch.Tensor.pow, torch.Tensor.sqrt = pow_, sqrt_


def case_fixture(fixture_bin, parity_dir, case, tmp):
    """(fixture dir under tmp, token rows) of parity case `case`."""
    with open(os.path.join(parity_dir, case, "case.json")) as f:
        meta = json.load(f)
    with open(os.path.join(parity_dir, case, "tokens.jsonl")) as f:
        tokens = [json.loads(l)["input_ids"] for l in f if l.strip()]
    fx = os.path.join(tmp, "fixture")
    cmd = [fixture_bin, "--arch", meta["arch"], "--seed", str(meta["seed"])]
    if meta.get("layout", "default") != "default":
        cmd += ["--layout", meta["layout"]]
    run(cmd + [fx])
    return fx, tokens


def load_model(torch, transformers, model_dir, attn=None):
    config = transformers.AutoConfig.from_pretrained(model_dir)
    cls = getattr(transformers, config.architectures[0])
    kw = {"attn_implementation": attn} if attn else {}
    m = cls.from_pretrained(model_dir, dtype="auto", device_map="cpu", **kw)
    m.eval()
    return m


GPTQ_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
                # MLA, Gated DeltaNet (in_proj_a / _b / _ba: disabled by the recipe)
                "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",
                "in_proj_qkvz", "in_proj_qkv", "in_proj_z", "out_proj")


def gram_matrices(torch, model, tokens):
    """name -> (G = X^T X in f64, rows T) of every nn.Linear GPTQ updates,
    from the unquantized model on the tokens."""
    grams, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in GPTQ_LINEARS \
                and ".layers." in name and "shared_expert_gate" not in name:
            def hook(m, inp, out, name=name):
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                g, t = grams.get(name, (0, 0))
                grams[name] = (g + x.t() @ x, t + x.shape[0])
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for row in tokens:
            model(input_ids=torch.tensor([row], dtype=torch.long))
    for h in hooks:
        h.remove()
    return grams


def run_modelopt(torch, transformers, model_dir, tokens, recipe_file, out_dir, attn=None):
    import modelopt.torch.quantization as mtq
    from modelopt.recipe import load_recipe
    from modelopt.torch.export import export_hf_checkpoint
    torch.manual_seed(1234)
    model = load_model(torch, transformers, model_dir, attn)
    recipe = load_recipe(recipe_file)
    cfg = recipe.quantize.model_dump()
    # layerwise checkpoints would go to the working directory
    cfg["algorithm"]["layerwise"]["checkpoint_dir"] = None

    def loop(m):
        with torch.no_grad():
            for row in tokens:
                m(input_ids=torch.tensor([row], dtype=torch.long), use_cache=False)

    model = mtq.quantize(model, cfg, forward_loop=loop)
    export_hf_checkpoint(model, export_dir=out_dir)


def load_st(torch, d):
    from safetensors.torch import load_file
    out = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith(".safetensors"):
            out.update(load_file(os.path.join(d, fn)))
    return out


def codes_of(torch, packed):
    lo = (packed & 0x0F).to(torch.int64)
    hi = (packed >> 4).to(torch.int64)
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)


def dequant(torch, st, name):
    c = codes_of(torch, st[name + ".weight"])
    mag = torch.tensor(E2M1, dtype=torch.float64)[c & 7]
    v = torch.where((c & 8) != 0, -mag, mag)
    s = st[name + ".weight_scale"].float().double().repeat_interleave(16, dim=1)
    return v * s * st[name + ".weight_scale_2"].double(), c


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode:
        sys.stderr.write(r.stdout + r.stderr)
        raise SystemExit("failed: " + " ".join(cmd))


def write_summary(path, head, rows, tot, extra=None):
    """Writes the whole-model result: head, versions, linear count, extra,
    mean layer-output MSE per tag (over tot["measured"] rows when given),
    share of differing codes, rows."""
    import modelopt
    import torch
    import transformers
    n = max(tot.get("measured", len(rows)), 1)
    summary = dict(head)
    summary["versions"] = {"modelopt": modelopt.__version__, "torch": torch.__version__,
                           "transformers": transformers.__version__}
    summary["linears"] = len(rows)
    summary.update(extra or {})
    summary["mean_layer_output_mse"] = {k: tot[k] / n for k in
                                        ("modelopt", "calibd", "rtn", "modelopt_eager")
                                        if k in tot}
    summary["codes_differing_pct"] = 100.0 * tot["diff"] / max(tot["codes"], 1)
    summary["per_linear"] = rows
    with open(path, "w") as f:
        json.dump(summary, f, indent=1)
        f.write("\n")
    return summary


def print_spread(m):
    """--spread's line: modelopt's MSE with eager attention against its own."""
    if "modelopt_eager" in m:
        print("modelopt with eager attention: %.6e (%+.2f%% of modelopt's)" % (
            m["modelopt_eager"], 100.0 * (m["modelopt_eager"] / m["modelopt"] - 1)))


def diff_args():
    """The options every *_model_diff.py takes; the script adds its own."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--calibd", required=True)
    ap.add_argument("--fixture-bin", required=True)
    ap.add_argument("--keep", default="", help="work (and keep the exports) in this folder")
    ap.add_argument("--tolerance", type=float, default=0.0,
                    help="fail when calibd's MSE exceeds modelopt's by more than this share")
    ap.add_argument("--out", required=True)
    ap.add_argument("--spread", action="store_true",
                    help="also run modelopt with transformers' eager attention (the same "
                    "algorithm on a forward that rounds differently): the spread of "
                    "modelopt's own MSE")
    return ap


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = diff_args()
    ap.add_argument("--case", default="qwen3_moe_fused")
    ap.add_argument("--parity-dir", default=os.path.join(here, "..", "parity"))
    ap.add_argument("--recipe", default="")
    args = ap.parse_args()

    import modelopt
    import torch
    import transformers
    patch_modelopt_cpu(torch)
    recipe = args.recipe or os.path.join(os.path.dirname(modelopt.__file__), "..",
                                         "modelopt_recipes", "general", "ptq",
                                         "nvfp4_default-kv_none-gptq.yaml")
    recipe = os.path.abspath(recipe)
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = args.keep
            os.makedirs(tmp, exist_ok=True)
        fx, tokens = case_fixture(args.fixture_bin, args.parity_dir, args.case, tmp)
        tok = os.path.join(tmp, "tokens.jsonl")
        with open(tok, "w") as f:
            for row in tokens:
                f.write(json.dumps({"input_ids": row}) + "\n")
        # the max (round-to-nearest) twin of the recipe (imports resolve in
        # calibd's recipe tree)
        rtn = os.path.join(tmp, "rtn.yaml")
        with open(recipe) as f:
            text = f.read()
        with open(rtn, "w") as f:
            f.write(text.replace("method: gptq", "method: max"))
        mo, ca, rt = (os.path.join(tmp, n) for n in ("modelopt", "calibd", "rtn"))
        run_modelopt(torch, transformers, fx, tokens, recipe, mo)
        me = os.path.join(tmp, "modelopt_eager")
        if args.spread:
            run_modelopt(torch, transformers, fx, tokens, recipe, me, "eager")
        base = [args.calibd, "quantize", "--model", fx, "--calib-tokens", tok, "--device",
                "cpu", "--div", "exact", "--quiet"]
        run(base + ["--recipe", recipe, "--out", ca])
        run(base + ["--recipe", rtn, "--out", rt])
        grams = gram_matrices(torch, load_model(torch, transformers, fx), tokens)
        src = load_model(torch, transformers, fx).state_dict()
        M, C = load_st(torch, mo), load_st(torch, ca)
        R = load_st(torch, rt)
        ME = load_st(torch, me) if args.spread else None
        rows, tot = [], {"modelopt": 0.0, "calibd": 0.0, "rtn": 0.0, "codes": 0, "diff": 0}
        if args.spread:
            tot["modelopt_eager"] = 0.0
        for name in sorted(grams):
            if name + ".weight_scale" not in C:
                continue
            g, t = grams[name]
            w = src[name + ".weight"].double()
            res = {"linear": name}
            for tag, st in (("modelopt", M), ("calibd", C), ("rtn", R), ("modelopt_eager", ME)):
                if st is None:
                    continue
                wh, codes = dequant(torch, st, name)
                d = wh - w
                mse = float(((d @ g) * d).sum() / (t * w.shape[0]))
                res[tag + "_mse"] = mse
                tot[tag] += mse
                if tag == "modelopt":
                    res["modelopt_codes_sha256"] = hashlib.sha256(
                        st[name + ".weight"].numpy().tobytes()).hexdigest()
                    mcodes = codes
                if tag == "calibd":
                    count_codes(res, tot, codes, mcodes)
            res["scales_equal"] = bool(torch.equal(
                M[name + ".weight_scale"].view(torch.uint8), C[name + ".weight_scale"].view(
                    torch.uint8))) and bool(torch.equal(M[name + ".weight_scale_2"],
                                                        C[name + ".weight_scale_2"]))
            rows.append(res)
    summary = write_summary(args.out, {"case": args.case, "recipe": os.path.basename(recipe),
                                       "tokens": sum(map(len, tokens))}, rows, tot)
    m = summary["mean_layer_output_mse"]
    print("%d linears: layer-output MSE modelopt %.6e, calibd %.6e, round-to-nearest %.6e; "
          "%.2f%% of codes differ" % (len(rows), m["modelopt"], m["calibd"], m["rtn"],
                                      summary["codes_differing_pct"]))
    print_spread(m)
    return 0 if m["calibd"] <= m["modelopt"] * (1 + args.tolerance + 1e-9) else 1


if __name__ == "__main__":
    sys.exit(main())
