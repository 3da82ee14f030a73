#!/usr/bin/env python3
"""AWQ-lite of a whole tiny model: real modelopt 0.47 vs calibd (docs/awq.md).

hf_ptq's `--qformat int4_awq` (INT4 weights in blocks of 128, awq_lite with
alpha_step 0.1, FP8 KV cast), or with `--qformat nvfp4_awq` its NVFP4 W4A4
variant (modelopt's NVFP4_AWQ_LITE_CFG; its NVFP4 Triton kernel replaced by
the same arithmetic in torch, gptq_model_diff.patch_modelopt_cpu; fp32 sqrt
correctly rounded as on a GPU, patch_ieee_sqrt), on a wide fixture (`calibd-fixture --wide`:
every linear input a multiple of 128) and the same tokens:

  * modelopt: mtq.quantize with the int4_awq preset (its forward loop feeds
    all token rows as one batch: one calibration step, as calibd's single
    micro-batch), then export_hf_checkpoint, on the CPU;
  * calibd: `calibd quantize --qformat int4_awq --device cpu --div exact`;
  * round to nearest (no AWQ): `calibd quantize` with
    general/ptq/int4_blockwise_weight_only (nvfp4_awq:
    general/ptq/nvfp4_default-kv_fp8_cast, max calibration).

Compared per searched linear: the chosen alpha (modelopt's from its search
state, calibd's from calibd_report.json), the exported pre_quant_scale and
fused norm weights (bytes), the share of differing 4-bit codes, and the
layer-output MSE of the exported weight on the unquantized model's inputs
X of that linear, mean((X' What^T - X W^T)^2), X' = X * pre_quant_scale
(X when the scale was fused into the norm: the norm's output already
carries it), against the source weight.  nvfp4_awq folds a dense MLP's
down_proj scale into up_proj's rows (no pre_quant_scale left to apply):
the up_proj and down_proj rows both measure the MLP block instead, SiLU(X' Gh^T) * (X' Uh^T) Dh^T
against the source MLP's output (X' the gate/up input as above; for the
round-to-nearest baseline too).  Input quantization is not in the metric;
without GQA (--mha) o_proj's scale is folded into v_proj's rows and the
two are not measured (left out of the mean, linears_measured).  The
exported input_scale and weight_scale_2 are compared byte for byte, and
hf_quant_config.json's / config.json's quantization sections (producer
and KV-cache keys aside: modelopt's preset has no KV quantizer) for
equality.
With `--qformat w4a8_awq` both run hf_ptq's w4a8_awq (modelopt's
W4A8_AWQ_BETA_CFG: INT4 blocks then an FP8 per-tensor stage, FP8 inputs;
calibd's `--qformat w4a8_awq`); the codes and weight_scale are measured as
int4_awq's (the export's weight_scale is not divided by the FP8 stage's
weight_scale_2), and input_scale / weight_scale_2 are compared.

With `--algorithm awq_full` (int4_awq, nvfp4_awq) both run modelopt's
awq_full instead of awq_lite (awq_lite, then awq_clip's per-block clip
search, per tensor with NVFP4; docs/awq.md "awq_full"): modelopt's preset
with `algorithm: {method: awq_full, alpha_step: 0.1}` (awq_clip's
defaults; for nvfp4_awq that is NVFP4_AWQ_FULL_CFG), calibd's
general/ptq/int4_awq_full-kv_fp8_cast / nvfp4_awq_full-kv_fp8_cast; the
summary adds the exported weight_scale tensors equal (the clipped block
amax / 7).  `--algorithm awq_clip` runs awq_clip alone (no scale search;
NVFP4_AWQ_CLIP_CFG for nvfp4_awq; calibd's int4_awq_clip-kv_fp8_cast /
nvfp4_awq_clip-kv_fp8_cast; docs/awq.md "awq_clip").
Writes the result to --out; exits
1 when calibd's mean MSE is worse than modelopt's by more than --tolerance.

    python awq_model_diff.py --calibd BUILD/daemon/calibd \\
        --fixture-bin BUILD/tests/fixtures/calibd-fixture \\
        [--arch qwen3] --out tests/modelopt/awq_model/qwen3_wide.json
"""
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_model_diff import (dequant, diff_args, load_model, load_st,  # noqa: E402
                             patch_ieee_sqrt, patch_modelopt_cpu, print_spread, run,
                             write_summary)
from model_diff_common import count_codes  # noqa: E402

AWQ_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj",
               "q_a_proj", "q_b_proj", "kv_a_proj_with_mqa", "kv_b_proj",  # MLA
               # Gated DeltaNet (in_proj_a / _b / _ba: disabled by modelopt's defaults)
               "in_proj_qkvz", "in_proj_qkv", "in_proj_z", "out_proj")
# (1 + weight) norms (docs/awq.md "Qwen3-Next and Qwen3.5-MoE")
ONE_PLUS_NORMS = ("qwen3_next", "qwen3_5_moe", "qwen3_5_moe_text")
# --no-experts: the routed experts unquantized (GPT-OSS with INT4 weights:
# neither modelopt 0.47 nor calibd exports its fused experts in INT4)
NO_EXPERTS = {"quantizer_name": "*mlp.experts*", "enable": False}


def linear_inputs(torch, model, tokens):
    """name -> X (f64 [T, in]) of every searched linear, unquantized model."""
    xs, hooks = {}, []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name.split(".")[-1] in AWQ_LINEARS \
                and ".layers." in name:
            def hook(m, inp, out, name=name):
                xs.setdefault(name, []).append(inp[0].reshape(-1, inp[0].shape[-1]).double())
            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        model(input_ids=torch.tensor(tokens, dtype=torch.long))
    for h in hooks:
        h.remove()
    return {k: torch.cat(v) for k, v in xs.items()}


def load_outputs(torch, transformers, fx, tokens, dirs):
    """The source model's linear inputs and state dict, then the exported
    tensors of each output folder in dirs (modelopt, calibd, round to
    nearest, modelopt with eager attention or None)."""
    model = load_model(torch, transformers, fx)
    xs = linear_inputs(torch, model, tokens)
    return (xs, model.state_dict()) + tuple(load_st(torch, d) if d else None for d in dirs)


def wide_case(fixture_bin, arch, seed, mha, rows, seq_len, tmp, wide=True, extra=()):
    """(fixture dir, token rows, tokens.jsonl) under tmp: `calibd-fixture
    --wide` (unless not wide) of arch and seed (--mha: no GQA; extra: more
    options) and rows x seq_len random tokens."""
    rng = random.Random(seed)
    tokens = [[rng.randrange(0, 260) for _ in range(seq_len)] for _ in range(rows)]
    fx = os.path.join(tmp, "fixture")
    run([fixture_bin, "--arch", arch, "--seed", str(seed)] + (["--wide"] if wide else []) +
        (["--mha"] if mha else []) + list(extra) + [fx])
    tok = os.path.join(tmp, "tokens.jsonl")
    with open(tok, "w") as f:
        for row in tokens:
            f.write(json.dumps({"input_ids": row}) + "\n")
    return fx, tokens, tok


def no_experts_recipe(name, out):
    """calibd's recipe file general/ptq/NAME.yaml with the routed experts
    left unquantized (the entry NO_EXPERTS appended), written to out."""
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, "..", "..", "recipes", name + ".yaml")) as f:
        text = f.read()
    with open(out, "w") as f:
        f.write(text.rstrip("\n") + "\n    - quantizer_name: '%s'\n      enable: false\n"
                % NO_EXPERTS["quantizer_name"])
    return out


def make_dense(torch, fx, seed):
    """--dense (deepseek_v3): every layer a dense MLP (first_k_dense_replace =
    num_hidden_layers), the MoE layers' router, experts and shared experts
    replaced by a dense MLP of intermediate_size with N(0, 1/fan_in) bf16
    weights (seeded): modelopt's int4_awq export fails on transformers 5's
    fused experts, and runs on this (docs/awq.md "MLA")."""
    from safetensors.torch import load_file, save_file
    with open(os.path.join(fx, "config.json")) as f:
        cfg = json.load(f)
    n, h, i = cfg["num_hidden_layers"], cfg["hidden_size"], cfg["intermediate_size"]
    cfg["first_k_dense_replace"] = n
    with open(os.path.join(fx, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
    path = os.path.join(fx, "model.safetensors")
    st = load_file(path)
    g = torch.Generator().manual_seed(seed)
    for L in range(n):
        pre = "model.layers.%d.mlp." % L
        if pre + "gate_proj.weight" in st:
            continue
        for k in [k for k in st if k.startswith(pre)]:
            del st[k]
        for name, o, fan in (("gate_proj", i, h), ("up_proj", i, h), ("down_proj", h, i)):
            st[pre + name + ".weight"] = (torch.randn(o, fan, generator=g) /
                                          fan ** 0.5).to(torch.bfloat16)
    save_file(st, path, metadata={"format": "pt"})


def run_modelopt(torch, transformers, model_dir, tokens, out_dir, qformat, algorithm="awq_lite",
                 attn=None, no_experts=False):
    import modelopt.torch.quantization as mtq
    from modelopt.torch.export import export_hf_checkpoint
    from modelopt.torch.quantization import model_calib
    torch.manual_seed(1234)
    model = load_model(torch, transformers, model_dir, attn)
    alphas, losses = {}, {}
    orig = model_calib.apply_pre_quant_scale_and_smooth
    names = {id(m): n for n, m in model.named_modules()}

    def capture(linear, pre_quant_scale=None):
        alphas[names.get(id(linear), "?")] = float(linear.awq_lite.best_alpha)
        losses[names.get(id(linear), "?")] = {a: float(v) for a, v in linear.awq_lite.loss.items()}
        return orig(linear, pre_quant_scale)

    model_calib.apply_pre_quant_scale_and_smooth = capture
    cfg = mtq.INT4_AWQ_CFG
    if qformat == "nvfp4_awq":
        patch_modelopt_cpu(torch)
        patch_ieee_sqrt(torch)
        cfg = mtq.NVFP4_AWQ_LITE_CFG
    if qformat == "w4a8_awq":
        cfg = mtq.W4A8_AWQ_BETA_CFG
    if algorithm == "awq_full":
        cfg = dict(cfg, algorithm={"method": "awq_full", "alpha_step": 0.1})
    if algorithm == "awq_clip":
        cfg = dict(cfg, algorithm={"method": "awq_clip"})
    if no_experts:
        cfg = dict(cfg, quant_cfg=list(cfg["quant_cfg"]) + [NO_EXPERTS])

    def loop(m):
        with torch.no_grad():
            m(input_ids=torch.tensor(tokens, dtype=torch.long))

    model = mtq.quantize(model, cfg, forward_loop=loop)
    model_calib.apply_pre_quant_scale_and_smooth = orig
    fused_experts_export(torch, model)
    export_hf_checkpoint(model, export_dir=out_dir)
    return alphas, losses


def fused_experts_export(torch, model):
    """modelopt 0.47's AWQ export averages the routed experts' pre_quant_scale
    (get_experts_list), which fails on transformers 5's fused experts (no
    len(); docs/awq.md): they are not searched (no pre_quant_scale, checked
    here), so the step is skipped for them and the export runs on."""
    from modelopt.torch.export import unified_export_hf as ue
    for name, mod in model.named_modules():
        q = getattr(mod, "input_quantizer", None)
        assert ".experts" not in name or getattr(q, "_pre_quant_scale", None) is None, name
    orig = ue.get_experts_list

    def experts_list(module, model_type):
        if not hasattr(module.experts, "__len__"):
            return []
        return orig(module, model_type)

    ue.get_experts_list = experts_list


def loss_margins(loss, best, other):
    """modelopt's search losses around its choice, relative to its least loss:
    the runner-up's (how close the search was) and, where calibd chose
    another alpha, that alpha's."""
    if not loss or best is None:
        return {}
    lb = loss[best]
    out = {"modelopt_loss_margin": min(
        (v - lb) / lb for a, v in loss.items() if a != best) if lb > 0 else None}
    if other is not None and other != best:
        a = min(loss, key=lambda k: abs(k - other))
        out["modelopt_loss_at_calibd_alpha"] = (loss[a] - lb) / lb if lb > 0 else None
    return out


def dequant_int4(torch, st, name):
    p = st[name + ".weight"]                      # [out / 2, in] uint8
    lo = (p & 0x0F).to(torch.int64)
    hi = (p >> 4).to(torch.int64)
    c = torch.stack([lo, hi], dim=1).reshape(p.shape[0] * 2, p.shape[1])
    v = torch.where(c >= 8, c - 16, c).double()
    s = st[name + ".weight_scale"].double().repeat_interleave(128, dim=1)
    return v * s, c


def main():
    ap = diff_args()
    ap.add_argument("--arch", default="qwen3")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--rows", type=int, default=8)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--qformat", default="int4_awq", choices=("int4_awq", "nvfp4_awq", "w4a8_awq"))
    ap.add_argument("--mha", action="store_true", help="fixture without GQA (calibd-fixture --mha)")
    ap.add_argument("--dense", action="store_true",
                    help="every layer a dense MLP: deepseek_v3 (make_dense), qwen3_next "
                    "(calibd-fixture --dense); modelopt's INT4 export fails on transformers "
                    "5's fused experts")
    ap.add_argument("--narrow", action="store_true",
                    help="the default fixture, not --wide (nvfp4_awq: 64-wide inputs)")
    ap.add_argument("--algorithm", default="awq_lite",
                    choices=("awq_lite", "awq_full", "awq_clip"))
    ap.add_argument("--no-experts", action="store_true",
                    help="the routed experts unquantized (both sides)")
    args = ap.parse_args()
    if args.algorithm != "awq_lite" and args.qformat == "w4a8_awq":
        ap.error("--algorithm %s runs with --qformat int4_awq or nvfp4_awq" % args.algorithm)
    # gpt_oss: INT4 weights without the experts (docs/awq.md "GPT-OSS")
    if args.arch == "gpt_oss" and args.qformat != "nvfp4_awq" and not args.no_experts:
        ap.error("--arch gpt_oss with INT4 weights needs --no-experts")

    import torch
    import transformers
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = args.keep
            os.makedirs(tmp, exist_ok=True)
        fx, tokens, tok = wide_case(args.fixture_bin, args.arch, args.seed, args.mha, args.rows,
                                    args.seq_len, tmp, not args.narrow,
                                    ["--dense"] if args.dense and args.arch != "deepseek_v3"
                                    else [])
        if args.dense and args.arch == "deepseek_v3":
            make_dense(torch, fx, args.seed)
        mo, ca, rt = (os.path.join(tmp, n) for n in ("modelopt", "calibd", "rtn"))
        nv = args.qformat == "nvfp4_awq"
        w8 = args.qformat == "w4a8_awq"
        m_alpha, m_loss = run_modelopt(torch, transformers, fx, tokens, mo, args.qformat,
                                       args.algorithm, no_experts=args.no_experts)
        me = os.path.join(tmp, "modelopt_eager")
        e_alpha = {}
        if args.spread:
            e_alpha, _ = run_modelopt(torch, transformers, fx, tokens, me, args.qformat,
                                      args.algorithm, "eager", args.no_experts)
        base = [args.calibd, "quantize", "--model", fx, "--calib-tokens", tok, "--device",
                "cpu", "--div", "exact", "--quiet"]
        lite = args.algorithm == "awq_lite"
        recipe = "general/ptq/%s_%s-kv_fp8_cast" % (args.qformat, args.algorithm[4:])
        rtn = "general/ptq/nvfp4_default-kv_fp8_cast" if nv else \
            "general/ptq/int4_blockwise_weight_only"
        if args.no_experts:  # the recipe files with the experts' entry appended
            recipe = no_experts_recipe("general/ptq/%s-kv_fp8_cast" % args.qformat if lite
                                       else recipe, os.path.join(tmp, "recipe.yaml"))
            rtn = no_experts_recipe(rtn, os.path.join(tmp, "rtn.yaml"))
            lite = False
        run(base + (["--qformat", args.qformat] if lite else ["--recipe", recipe]) +
            ["--out", ca])
        run(base + ["--recipe", rtn, "--out", rt])
        with open(os.path.join(ca, "calibd_report.json")) as f:
            rep = json.load(f)
        c_alpha = {r["module"]: r["alpha"] for r in rep[args.algorithm]["linears"]}
        xs, src, M, C, R, ME = load_outputs(torch, transformers, fx, tokens,
                                            (mo, ca, rt, me if args.spread else None))
        rows = []
        tot = {"modelopt": 0.0, "calibd": 0.0, "rtn": 0.0, "codes": 0, "diff": 0, "measured": 0,
               "kept": 0, "kept_modelopt": 0.0, "kept_calibd": 0.0, "kept_rtn": 0.0}
        tags = ("modelopt", "calibd", "rtn") + (("modelopt_eager",) if args.spread else ())
        for tag in tags[3:]:
            tot[tag] = 0.0
        deq = (lambda st, n: dequant(torch, st, n)) if nv else \
            (lambda st, n: dequant_int4(torch, st, n))
        same = {"input_scale": 0, "weight_scale_2": 0, "weight_scale": 0}
        for name in sorted(xs):
            x = xs[name]
            w = src[name + ".weight"].double()
            y = x @ w.t()
            res = {"linear": name, "modelopt_alpha": m_alpha.get(name),
                   "calibd_alpha": c_alpha.get(name)}
            res.update(loss_margins(m_loss.get(name), m_alpha.get(name), c_alpha.get(name)))
            if args.spread:
                res["modelopt_eager_alpha"] = e_alpha.get(name)
            for tag, st in zip(tags, (M, C, R, ME)):
                wh, codes = deq(st, name)
                pq = st.get(name + ".pre_quant_scale")
                pre = name[: name.rfind(".") + 1]
                if nv and name.endswith(("self_attn.v_proj", "self_attn.o_proj")) and \
                        tag != "rtn" and st.get(pre + "o_proj.pre_quant_scale") is None and \
                        args.algorithm != "awq_clip":
                    # o_proj's scale folded into v_proj's rows (no GQA): not
                    # measured (the attention mixes tokens between the two)
                    res["metric"] = "none"
                    mse = None
                elif nv and name.endswith(("mlp.down_proj", "mlp.up_proj")) and \
                        st.get(pre + "down_proj.pre_quant_scale") is None and \
                        args.algorithm != "awq_clip":
                    mse = mlp_block_mse(torch, xs, src, st, pre, tag == "rtn", deq)
                    res["metric"] = "mlp_block"
                else:
                    xq = x * pq.double() if pq is not None else x
                    if pq is None and tag != "rtn" and args.algorithm != "awq_clip":
                        # fused into the norm: the norm output carries the scale
                        xq = x / src_norm_ratio(torch, src, st, name, args.arch)
                    mse = float(((xq @ wh.t() - y) ** 2).mean())
                res[tag + "_mse"] = mse
                if tag == "modelopt":
                    mcodes, mpq = codes, pq
                elif tag == "calibd":
                    count_codes(res, tot, codes, mcodes)
                    res["pre_quant_scale_equal"] = (pq is None and mpq is None) or (
                        pq is not None and mpq is not None and torch.equal(pq, mpq))
                    for k in same:
                        a, b = M.get(name + "." + k), C.get(name + "." + k)
                        same[k] += a is not None and b is not None and torch.equal(a, b)
            if res.get("metric") != "none":
                tot["measured"] += 1
                for tag in tags:
                    tot[tag] += res[tag + "_mse"]
                if mpq is not None:  # modelopt's scale not fused into a norm
                    tot["kept"] += 1
                    for tag in tags[:3]:
                        tot["kept_" + tag] += res[tag + "_mse"]
            rows.append(res)
        cfg_equal = {}
        for fn, key in (("hf_quant_config.json", "quantization"),
                        ("config.json", "quantization_config")):
            got = []
            for d in (mo, ca):
                with open(os.path.join(d, fn)) as f:
                    q = dict(json.load(f).get(key) or {})
                # producer; the KV cache: modelopt's preset has none, calibd's
                # recipe hf_ptq's default fp8_cast
                for k in ("producer", "kv_cache_quant_algo", "kv_cache_scheme"):
                    q.pop(k, None)
                got.append(q)
            cfg_equal[fn] = got[0] == got[1]
            if not cfg_equal[fn]:
                print("%s differs:\n modelopt %s\n calibd   %s" % (fn, got[0], got[1]))
        norms = {}
        for k in sorted(M):
            if k.endswith("layernorm.weight") and ".layers." in k:
                norms[k] = int((M[k].view(torch.int16) != C[k].view(torch.int16)).sum())
    summary = write_summary(
        args.out, {"arch": args.arch, "wide": not args.narrow, "mha": args.mha,
                   "dense": args.dense, "no_experts": args.no_experts, "seed": args.seed,
                   "rows": args.rows,
                   "seq_len": args.seq_len, "qformat": args.qformat,
                   "algorithm": args.algorithm}, rows, tot,
        {"alphas_equal": sum(r["modelopt_alpha"] == r["calibd_alpha"] for r in rows),
         "input_scales_equal": same["input_scale"] if nv or w8 else None,
         "weight_scale_2_equal": same["weight_scale_2"] if nv or w8 else None,
         "weight_scales_equal": same["weight_scale"],
         "quant_configs_equal": cfg_equal, "linears_measured": tot["measured"],
         "pre_quant_scales_equal": sum(bool(r["pre_quant_scale_equal"]) for r in rows),
         "norm_values_differing": norms,
         # the linears whose pre_quant_scale modelopt exports (not fused into
         # a norm): their mean MSE, free of the norm folds
         "mean_mse_pqs_kept": {t: tot["kept_" + t] / max(tot["kept"], 1)
                               for t in ("modelopt", "calibd", "rtn")},
         "linears_pqs_kept": tot["kept"]})
    m = summary["mean_layer_output_mse"]
    print("%d linears: alphas equal %d, pre_quant_scales equal %d; layer-output MSE modelopt "
          "%.6e, calibd %.6e, round-to-nearest %.6e; %.3f%% of codes differ; norm values "
          "differing %s; input_scale / weight_scale_2 equal %s / %s"
          % (len(rows), summary["alphas_equal"], summary["pre_quant_scales_equal"],
             m["modelopt"], m["calibd"], m["rtn"], summary["codes_differing_pct"],
             sum(norms.values()), summary["input_scales_equal"],
             summary["weight_scale_2_equal"]))
    k = summary["mean_mse_pqs_kept"]
    print("the %d linears with a pre_quant_scale: MSE modelopt %.6e, calibd %.6e, round-to-nearest "
          "%.6e" % (summary["linears_pqs_kept"], k["modelopt"], k["calibd"], k["rtn"]))
    print_spread(m)
    for r in rows:
        if r["modelopt_alpha"] != r["calibd_alpha"]:
            print("  %s: alpha modelopt %s, calibd %s; modelopt's loss at calibd's alpha %+.2e "
                  "relative; runner-up %+.2e" % (
                      r["linear"], r["modelopt_alpha"], r["calibd_alpha"],
                      r.get("modelopt_loss_at_calibd_alpha", float("nan")),
                      r.get("modelopt_loss_margin", float("nan"))))
    return 0 if m["calibd"] <= m["modelopt"] * (1 + args.tolerance + 1e-9) else 1


def mlp_block_mse(torch, xs, src, st, pre, rtn, deq):
    """nvfp4_awq's dense MLP (down_proj's scale folded into up_proj's rows):
    the block's output error, SiLU(X' Gh^T) * (X' Uh^T) Dh^T against the
    source MLP's output, X' the gate/up input (times the fused norm ratio)."""
    xg = xs[pre + "gate_proj"]
    xq = xg if rtn else xg / src_norm_ratio(torch, src, st, pre + "gate_proj", "")
    (gh, _), (uh, _), (dh, _) = (deq(st, pre + p) for p in ("gate_proj", "up_proj", "down_proj"))
    y = xs[pre + "down_proj"] @ src[pre + "down_proj.weight"].double().t()
    h = torch.nn.functional.silu(xq @ gh.t()) * (xq @ uh.t())
    return float(((h @ dh.t() - y) ** 2).mean())


def src_norm_ratio(torch, src, st, name, arch):
    """The inverse fused scale of a q/k/v, in_proj or gate/up linear: the
    source norm's effective weight over the exported one's (1 + weight for
    the archs of ONE_PLUS_NORMS)."""
    attn = next((a for a in (".self_attn.", ".linear_attn.") if a in name), None)
    layer = name.split(attn)[0] if attn else name.split(".mlp.")[0]
    norm = layer + (".input_layernorm.weight" if attn else ".post_attention_layernorm.weight")
    one = 1.0 if arch in ONE_PLUS_NORMS else 0.0
    return (src[norm].double() + one) / (st[norm].double() + one)


if __name__ == "__main__":
    sys.exit(main())
