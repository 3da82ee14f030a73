#!/usr/bin/env python3
"""What the AWQ / SmoothQuant search sees: modelopt's inputs against calibd's
(docs/awq.md "Where the searches part", docs/smoothquant.md "Whole model").

Runs one case of awq_model_diff.py (`--algo awq`: a wide fixture, random
token rows, all in one forward step) or sq_model_diff.py (`--algo sq`: a
parity case, one token row per step) and records, per searched / smoothed
linear:

  * the inputs modelopt's calibration passes hand the linear (forward
    pre-hooks on the quantized model: every call of every pass), checked
    against transformers' plain forward on the same rows;
  * calibd's inputs of the same linear (CALIBD_TEST_SITE_DUMP: the rows the
    engine's linear-run sites receive, engine/calib/lin_run.c);
  * how they differ: elements differing, the largest absolute and relative
    difference (relative to the largest |x| of the linear), and the channels
    whose statistic differs in bf16 (awq: the mean |x| over the tokens, the
    search's act_scale; sq: the max |x|, SmoothQuant's);
  * awq: calibd's search (build/tests/calib/awq_search, cal_awq_lite) on
    modelopt's inputs and on its own, each alpha's loss beside modelopt's;
  * --stages: layer 0 op by op, each op through transformers' module from
    calibd's own input of that op (input norm; attention, also against
    docs/architectures.md's formula in exact arithmetic; o_proj + residual +
    post-attention norm; the MLP, or an MoE block through layer 1's input
    norm): the outputs that differ from calibd's (stages()).

    python search_inputs.py --calibd BUILD/cli/calibd \\
        --fixture-bin BUILD/tests/fixtures/calibd-fixture \\
        --awq-search BUILD/tests/calib/awq_search \\
        --algo awq --arch llama [--mha] [--qformat nvfp4_awq] --out OUT.json
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import awq_model_diff  # noqa: E402
import sq_model_diff  # noqa: E402
from gptq_model_diff import case_fixture, load_model  # noqa: E402

# engine/calib/calib_internal.h's sites, by the linears that read them
SITES = {0: ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         1: ("self_attn.o_proj",), 4: ("mlp.gate_proj", "mlp.up_proj"), 5: ("mlp.down_proj",),
         8: ("mlp.shared_expert.gate_proj", "mlp.shared_expert.up_proj"),
         9: ("mlp.shared_expert.down_proj",)}


def calibd_inputs(torch, d):
    """linear -> calibd's bf16 inputs [T, cols] from CALIBD_TEST_SITE_DUMP's files."""
    out = {}
    for fn in glob.glob(os.path.join(d, "L*_s*_e-1_c*.bf16")):
        L, s = os.path.basename(fn)[1:-5].split("_")[:2]
        for lin in SITES.get(int(s[1:]), ()):
            out["model.layers.%s.%s" % (L, lin)] = calibd_inputs.one(torch, fn)
    return out


def _one(torch, fn):
    c = int(fn[:-5].rsplit("_c", 1)[1])
    with open(fn, "rb") as f:
        return torch.frombuffer(bytearray(f.read()), dtype=torch.bfloat16).view(-1, c)


calibd_inputs.one = _one


def hook_inputs(torch, model, suffixes):
    """Forward pre-hooks recording every call's input (bf16 [rows, cols]) of
    the linears whose names end in one of suffixes; returns (calls, hooks)."""
    calls, hooks = {}, []
    for name, mod in model.named_modules():
        if name.endswith(suffixes) and ".layers." in name:
            def pre(m, inp, name=name):
                calls.setdefault(name, []).append(
                    inp[0].detach().reshape(-1, inp[0].shape[-1]).clone())
            hooks.append(mod.register_forward_pre_hook(pre))
    return calls, hooks


def diff(torch, a, b, stat):
    a, b = a.double(), b.double()
    d = (a - b).abs()
    sa = stat(a.to(torch.bfloat16).float()).to(torch.bfloat16)
    sb = stat(b.to(torch.bfloat16).float()).to(torch.bfloat16)
    return {"elements_differing": int((d > 0).sum()), "elements": a.numel(),
            "max_abs": float(d.max()), "max_rel": float(d.max() / a.abs().max()),
            "channels_stat_differing": int((sa.view(torch.int16) != sb.view(torch.int16)).sum())}


def site_rows(torch, dump, L, site):
    fn = glob.glob(os.path.join(dump, "L%d_s%d_e-1_c*.bf16" % (L, site)))
    return calibd_inputs.one(torch, fn[0]) if fn else None


def stages(torch, model, tokens, dump):
    """Layer 0 op by op from calibd's inputs (module docstring, --stages)."""
    import torch.nn.functional as F
    import transformers.integrations.sdpa_attention as sa
    lay, ids = model.model.layers[0], torch.tensor(tokens)
    B, S = ids.shape
    out, seen = [], {}

    def row(op, a, b):
        out.append({"op": op, "differing": int((a.float() != b.float()).sum()), "of": b.numel()})
    orig = F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        o = orig(q, k, v, *a, **kw)
        seen["qkv"] = (q, k, v, kw.get("scale"))
        return o
    def keep(key):  # a pre-hook recording the first input (returns None: input unchanged)
        return lambda m, i: seen.__setitem__(key, seen.get(key, i[0].reshape(-1, i[0].shape[-1])))
    hooks = [lay.input_layernorm.register_forward_pre_hook(keep("x"))]
    qkv_in, o_in = site_rows(torch, dump, 0, 0), site_rows(torch, dump, 0, 1)
    moe = site_rows(torch, dump, 0, 4) is None
    gu_in = site_rows(torch, dump, 0, 8 if moe else 4)
    with torch.no_grad():
        model(input_ids=ids)  # layer 0's input, x
        x, H = seen["x"], seen["x"].shape[-1]
        row("input RMSNorm", lay.input_layernorm(x), qkv_in)
        h = qkv_in.view(B, S, H)
        pe = model.model.rotary_emb(h, torch.arange(S).unsqueeze(0).expand(B, -1))
        hooks.append(lay.self_attn.o_proj.register_forward_pre_hook(keep("o_in")))
        sa.torch.nn.functional.scaled_dot_product_attention = spy
        try:
            lay.self_attn(hidden_states=h, position_embeddings=pe, attention_mask=None)
        finally:
            sa.torch.nn.functional.scaled_dot_product_attention = orig
        sdpa = seen["o_in"]
        row("attention (transformers, SDPA)", sdpa, o_in)
        q, k, v, scale = (t.double() if torch.is_tensor(t) else t for t in seen["qkv"])
        rep, hd = q.shape[1] // k.shape[1], q.shape[3]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        sc = (q @ k.transpose(-1, -2)).float() * (scale if scale else hd ** -0.5)
        sc = sc.masked_fill(~torch.ones(S, S, dtype=torch.bool).tril(), float("-inf"))
        e = torch.exp((sc - sc.amax(-1, keepdim=True)).double())
        f = (e.float().to(torch.bfloat16).double() @ v) / e.sum(-1, keepdim=True)
        f = f.transpose(1, 2).reshape(B * S, -1)
        row("attention (formula, exact arithmetic)", f.to(torch.bfloat16), o_in)
        # how far each rounds from the formula's exact value, in bf16 steps there
        step = torch.ldexp(torch.ones_like(f), (torch.frexp(f)[1] - 8).int())
        for r_, got in ((out[-2], sdpa), (out[-1], o_in)):
            r_["mean_error_bf16_steps"] = float(((got.double() - f) / step).abs().mean())
        # SDPA's CPU kernel's logsumexp against the formula's (max + log l)
        qb, kb, vb = (t.to(torch.bfloat16) for t in (q, k, v))
        lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            qb, kb, vb, 0.0, True, scale=scale if scale else hd ** -0.5)[1].double()
        d = lse - (sc.amax(-1).double() + torch.log(e.sum(-1)))
        out[-2]["logsumexp_diff_max_abs"] = float(d.abs().max())
        out[-2]["logsumexp_diff_std"] = float(d.std())
        r = x + lay.self_attn.o_proj(o_in)
        row("o_proj + residual + post-attention RMSNorm", lay.post_attention_layernorm(r), gu_in)
        if moe:
            y = lay.mlp(gu_in.view(1, -1, H))
            y = (y[0] if isinstance(y, tuple) else y).reshape(-1, H)
            row("MoE block + residual + layer 1's input RMSNorm",
                model.model.layers[1].input_layernorm(r + y), site_rows(torch, dump, 1, 0))
        else:
            m = lay.mlp
            row("act(gate) * up", m.act_fn(m.gate_proj(gu_in)) * m.up_proj(gu_in),
                site_rows(torch, dump, 0, 5))
    for hk in hooks:
        hk.remove()
    return out


def awq_search(torch, tool, wq, w, x, tmp):
    wf, xf = os.path.join(tmp, "w.bf16"), os.path.join(tmp, "x.bf16")
    w.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tofile(wf)
    x.to(torch.bfloat16).contiguous().view(torch.int16).numpy().tofile(xf)
    out = subprocess.run([tool, wq, str(w.shape[0]), str(w.shape[1]), wf, xf],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calibd", required=True)
    ap.add_argument("--fixture-bin", required=True)
    ap.add_argument("--awq-search", help="build/tests/calib/awq_search (--algo awq)")
    ap.add_argument("--algo", choices=("awq", "sq"), default="awq")
    ap.add_argument("--arch", default="llama")
    ap.add_argument("--mha", action="store_true")
    ap.add_argument("--qformat", default="int4_awq", choices=("int4_awq", "nvfp4_awq"))
    ap.add_argument("--case", default="qwen2_moe", help="--algo sq: the parity case")
    ap.add_argument("--parity-dir", default=os.path.join(here, "..", "parity"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stages", action="store_true", help="layer 0 op by op (docstring)")
    ap.add_argument("--keep", help="work in this folder and keep it (fixture, dumps, exports)")
    args = ap.parse_args()

    import torch
    import transformers
    awq = args.algo == "awq"
    suffixes = tuple(awq_model_diff.AWQ_LINEARS)
    with tempfile.TemporaryDirectory() as tmp:
        if args.keep:
            tmp = args.keep
            os.makedirs(tmp, exist_ok=True)
        if awq:  # awq_model_diff.py's defaults: 8 rows of 64 tokens
            fx, tokens, tok = awq_model_diff.wide_case(args.fixture_bin, args.arch, args.seed,
                                                       args.mha, 8, 64, tmp)
            cmd = ["--qformat", args.qformat]
        else:
            fx, tokens = case_fixture(args.fixture_bin, args.parity_dir, args.case, tmp)
            tok = os.path.join(args.parity_dir, args.case, "tokens.jsonl")
            cmd = ["--recipe", sq_model_diff.RECIPE]
        # modelopt, with its inputs recorded
        seen = {}
        orig_load = load_model

        def load_hooked(torch_, transformers_, d, attn=None):
            m = orig_load(torch_, transformers_, d, attn)
            calls, hooks = hook_inputs(torch, m, suffixes)
            seen["calls"] = calls
            return m
        mod = awq_model_diff if awq else sq_model_diff
        mod.load_model = load_hooked
        mo = os.path.join(tmp, "modelopt")
        if awq:
            m_alpha, m_loss = awq_model_diff.run_modelopt(torch, transformers, fx, tokens, mo,
                                                          args.qformat)
        else:
            sq_model_diff.run_modelopt(torch, transformers, fx, tokens, mo)
            m_alpha, m_loss = {}, {}
        mod.load_model = orig_load
        # transformers' plain forward, all rows in one step (the metric's inputs)
        hf = awq_model_diff.linear_inputs(torch, load_model(torch, transformers, fx), tokens)
        dump = os.path.join(tmp, "dump")
        os.makedirs(dump, exist_ok=True)
        for fn in glob.glob(os.path.join(dump, "*.bf16")):
            os.remove(fn)
        env = dict(os.environ, CALIBD_TEST_SITE_DUMP=dump)
        subprocess.run([args.calibd, "quantize", "--model", fx, "--calib-tokens", tok,
                        "--device", "cpu", "--div", "exact", "--quiet", "--out",
                        os.path.join(tmp, "calibd")] + cmd, check=True, env=env)
        with open(os.path.join(tmp, "calibd", "calibd_report.json")) as f:
            rep = json.load(f)
        c_alpha = {r["module"]: r["alpha"] for r in rep.get("awq_lite", {}).get("linears", [])}
        ca = calibd_inputs(torch, dump)
        model = load_model(torch, transformers, fx)
        src = model.state_dict()
        stage_rows = stages(torch, model, tokens, dump) if args.stages else None
        stat = (lambda x: x.abs().mean(0)) if awq else (lambda x: x.abs().amax(0))
        rows = []
        for name in sorted(ca):
            calls = seen["calls"].get(name)
            if not calls:
                continue
            # modelopt's passes over the token rows: awq two (statistics,
            # search) on all rows at once; sq one row per step.  Other calls
            # (the export's dummy forwards) are left out.
            T = ca[name].shape[0]
            step = T // (1 if awq else len(tokens))
            calls = [x for x in calls if x.shape[0] == step]
            per = T // step
            passes = [torch.cat(calls[i * per:(i + 1) * per]) for i in range(len(calls) // per)]
            xm = passes[-1]
            res = {"linear": name, "modelopt_passes_equal": all(torch.equal(p, xm) for p in passes),
                   "modelopt_equal_transformers": torch.equal(xm.double(), hf[name]),
                   "calibd_vs_modelopt": diff(torch, xm, ca[name], stat)}
            if awq and args.awq_search:
                wq = "nvfp4" if args.qformat == "nvfp4_awq" else "int4"
                w = src[name + ".weight"]
                on_mo = awq_search(torch, args.awq_search, wq, w, xm, tmp)
                on_ca = awq_search(torch, args.awq_search, wq, w, ca[name], tmp)
                ml = m_loss.get(name, {})
                mls = [ml[a] for a in sorted(ml)]
                res.update({"modelopt_alpha": m_alpha.get(name), "calibd_alpha": c_alpha.get(name),
                            "search_on_modelopt_inputs_alpha": on_mo["best_alpha"],
                            "search_on_calibd_inputs_alpha": on_ca["best_alpha"],
                            "modelopt_loss": mls, "search_on_modelopt_inputs_loss": on_mo["loss"],
                            "search_on_calibd_inputs_loss": on_ca["loss"],
                            "loss_max_rel_diff_same_inputs": max(
                                abs(a / b - 1) for a, b in zip(on_mo["loss"], mls)) if mls else None})
            rows.append(res)
    with open(args.out, "w") as f:
        json.dump({"algo": args.algo, "arch": args.arch, "mha": args.mha,
                   "qformat": args.qformat if awq else None,
                   "case": None if awq else args.case, "linears": rows,
                   "layer0_stages": stage_rows}, f, indent=1)
    for r in rows:
        d = r["calibd_vs_modelopt"]
        line = "%-40s mo=hf %d  differ %5d/%6d max_abs %.3g max_rel %.3g stat_ch %d" % (
            r["linear"], r["modelopt_equal_transformers"], d["elements_differing"], d["elements"],
            d["max_abs"], d["max_rel"], d["channels_stat_differing"])
        if "modelopt_alpha" in r:
            line += "  alpha mo %.1f ca %.1f | search on mo %.1f on ca %.1f | loss rel %.1e" % (
                r["modelopt_alpha"] if r["modelopt_alpha"] is not None else -1, r["calibd_alpha"] if r["calibd_alpha"] is not None else -1,
                r["search_on_modelopt_inputs_alpha"], r["search_on_calibd_inputs_alpha"],
                r["loss_max_rel_diff_same_inputs"] or 0)
        print(line)
    for r in stage_rows or []:
        print("layer 0 %-58s %6d of %d differ from calibd's%s" % (
            r["op"], r["differing"], r["of"], "; %s off the exact formula by %.3f bf16 steps "
            "on average" % ("SDPA" if "SDPA" in r["op"] else "calibd", r["mean_error_bf16_steps"])
            if "mean_error_bf16_steps" in r else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
