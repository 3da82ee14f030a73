#!/usr/bin/env python3
"""SmoothQuant of a whole tiny model: real modelopt 0.47 vs calibd
(docs/smoothquant.md "Differential test").

hf_ptq's `--qformat int8_sq` (calibd's general/ptq/int8_sq-kv_fp8_cast:
modelopt's int8_smoothquant preset, alpha 1.0, INT8 per-channel weights and
per-tensor inputs, FP8 KV cast) on a fixture (calibd-fixture, the parity
case's arch, layout and seed) with the parity case's tokens:

  * modelopt: mtq.quantize with that recipe (one token row per forward step,
    as modelopt_fingerprints.py), then export_hf_checkpoint, on the CPU;
  * calibd: `calibd quantize --recipe general/ptq/int8_sq-kv_fp8_cast
    --device cpu --div exact`;
  * no smoothing (round to nearest): calibd's general/ptq/int8_default-kv_fp8_cast.

Compared per smoothed linear: the exported pre_quant_scale (values that
differ; and hf_pre_quant_scale_differing: modelopt's against 1 / max|x| of
transformers' own inputs, the alpha-1 scale before the export's shared-input
averaging, which is where the two can part), the 8-bit codes (share that differ), and the layer-output MSE of
the exported weight on the unquantized model's inputs X of that linear
(awq_model_diff.load_outputs: all token rows in one forward),
mean((X * pqs) What^T - X W^T)^2 (What = codes * weight_scale per row; X for
the unsmoothed baseline), against the source weight.  The input quantizer
is left out of the MSE (its per-tensor scale is checked by the
fingerprints).  Writes the result to --out; exits 1 when calibd's mean MSE is
worse than modelopt's by more than --tolerance.

    python sq_model_diff.py --calibd BUILD/cli/calibd \\
        --fixture-bin BUILD/tests/fixtures/calibd-fixture --case llama \\
        --out tests/modelopt/sq_model/llama.json
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from awq_model_diff import load_outputs  # noqa: E402
from gptq_model_diff import (case_fixture, diff_args, load_model,  # noqa: E402
                             print_spread, run, write_summary)
from model_diff_common import count_codes  # noqa: E402
from modelopt_fingerprints import recipe_file  # noqa: E402

RECIPE = "general/ptq/int8_sq-kv_fp8_cast"
BASELINE = "general/ptq/int8_default-kv_fp8_cast"


def run_modelopt(torch, transformers, model_dir, tokens, out_dir, attn=None):
    import modelopt.torch.quantization as mtq
    from modelopt.recipe import load_recipe
    from modelopt.torch.export import export_hf_checkpoint
    torch.manual_seed(1234)
    model = load_model(torch, transformers, model_dir, attn)
    cfg = load_recipe(recipe_file(RECIPE)).quantize.model_dump()

    def loop(m):
        with torch.no_grad():
            for row in tokens:
                m(input_ids=torch.tensor([row], dtype=torch.long))

    model = mtq.quantize(model, cfg, forward_loop=loop)
    export_hf_checkpoint(model, export_dir=out_dir)


def dequant_int8(torch, st, name):
    q = st[name + ".weight"]
    return q.double() * st[name + ".weight_scale"].double()[:, None], q


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = diff_args()
    ap.add_argument("--case", default="llama")
    ap.add_argument("--parity-dir", default=os.path.join(here, "..", "parity"))
    args = ap.parse_args()

    import torch
    import transformers
    with open(os.path.join(args.parity_dir, args.case, "case.json")) as f:
        meta = json.load(f)
    tok = os.path.join(args.parity_dir, args.case, "tokens.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = args.keep
            os.makedirs(tmp, exist_ok=True)
        fx, tokens = case_fixture(args.fixture_bin, args.parity_dir, args.case, tmp)
        mo, ca, rt = (os.path.join(tmp, n) for n in ("modelopt", "calibd", "rtn"))
        run_modelopt(torch, transformers, fx, tokens, mo)
        me = os.path.join(tmp, "modelopt_eager")
        if args.spread:
            run_modelopt(torch, transformers, fx, tokens, me, "eager")
        base = [args.calibd, "quantize", "--model", fx, "--calib-tokens", tok, "--device",
                "cpu", "--div", "exact", "--quiet"]
        run(base + ["--recipe", RECIPE, "--out", ca])
        run(base + ["--recipe", BASELINE, "--out", rt])
        xs, src, M, C, R, ME = load_outputs(torch, transformers, fx, tokens,
                                            (mo, ca, rt, me if args.spread else None))
        rows = []
        tot = {"modelopt": 0.0, "calibd": 0.0, "rtn": 0.0, "codes": 0, "diff": 0}
        if args.spread:
            tot["modelopt_eager"] = 0.0
        n_pqs_eq = 0
        for name in sorted(xs):
            if name + ".pre_quant_scale" not in M:
                continue  # not smoothed by modelopt
            x = xs[name]
            y = x @ src[name + ".weight"].double().t()
            res = {"linear": name}
            # alpha 1: s = 1 / act (clamped), act the per-channel max |x| of
            # transformers' own forward -- what modelopt's scale is a function of
            s_hf = (1.0 / x.abs().amax(0).float()).clamp(1e-4, 1e4).to(torch.bfloat16)
            res["hf_pre_quant_scale_differing"] = int(
                (s_hf.view(torch.int16) != M[name + ".pre_quant_scale"].view(torch.int16)).sum())
            for tag, st in (("modelopt", M), ("calibd", C), ("rtn", R), ("modelopt_eager", ME)):
                if st is None:
                    continue
                wh, codes = dequant_int8(torch, st, name)
                pq = st.get(name + ".pre_quant_scale")
                xq = x * pq.double() if pq is not None else x
                mse = float(((xq @ wh.t() - y) ** 2).mean())
                res[tag + "_mse"] = mse
                tot[tag] += mse
                if tag == "modelopt":
                    mcodes, mpq = codes, pq
                elif tag == "calibd":
                    count_codes(res, tot, codes, mcodes)
                    d = int((pq.view(torch.int16) != mpq.view(torch.int16)).sum())
                    res["pre_quant_scale_differing"] = d
                    res["pre_quant_scale_max_rel"] = float(
                        ((pq.double() - mpq.double()).abs() / mpq.double().abs()).max())
                    n_pqs_eq += d == 0
                elif tag == "modelopt_eager":
                    res["eager_pre_quant_scale_differing"] = int(
                        (pq.view(torch.int16) != mpq.view(torch.int16)).sum())
            rows.append(res)
    summary = write_summary(
        args.out, {"case": args.case, "arch": meta["arch"], "seed": meta["seed"],
                   "recipe": RECIPE, "baseline": BASELINE}, rows, tot,
        {"pre_quant_scales_equal": n_pqs_eq})
    m = summary["mean_layer_output_mse"]
    print("%d linears: pre_quant_scales equal %d; layer-output MSE modelopt %.6e, calibd %.6e, "
          "unsmoothed %.6e; %.3f%% of codes differ" % (
              len(rows), n_pqs_eq, m["modelopt"], m["calibd"], m["rtn"],
              summary["codes_differing_pct"]))
    print_spread(m)
    return 0 if m["calibd"] <= m["modelopt"] * (1 + args.tolerance + 1e-9) else 1


if __name__ == "__main__":
    sys.exit(main())
