#!/usr/bin/env python3
"""reference.py - an independent reference for `calibd eval`'s quantized forward.

Loads the source checkpoint with transformers (CPU, bf16, eager), replaces every
quantized Linear / expert weight with its dequantization from the exported
tensors (done here in PyTorch from the safetensors bytes), fake-quantizes the
inputs of quantized modules with the exported input_scale (NVFP4: per block of
16 along the input dimension with input_scale as the global scale; FP8 and
INT8: per tensor), after multiplying them by the module's pre_quant_scale
where it has one (int8_sq, AWQ), and K / V with k_scale / v_scale (FP8 per tensor; an NVFP4 KV cache
per block of 16 along head_dim with k_scale / 6 as the global scale; affine:
K - k_bias, V - v_bias, then the bias added back; a rotated one: Q and K
through the normalized Hadamard transform first), and writes the logits of the held-out
tokens as raw bf16 [tokens, vocab] (the format of `calibd eval --logits-out`).

    /opt/hfenv/bin/python tests/eval/reference.py SRC QUANT TOKENS.jsonl OUT.bf16

docs/eval.md describes the numerics; tests/eval/test_eval.c compares calibd's
logits with the committed output of this script.
"""
import json
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

E2M1 = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
E2M1_BOUNDS = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0])


def e2m1_round(v):
    """Nearest E2M1 value (saturating at 6), ties to the even code."""
    a = v.abs().clamp(max=6.0)
    idx = torch.bucketize(a, E2M1_BOUNDS)  # a == bound -> lower code
    # ties go to the even code: lower code when even, else upper
    tie = (idx < 7) & (a == E2M1_BOUNDS[idx.clamp(max=6)])
    idx = torch.where(tie & (idx % 2 == 1), idx + 1, idx)
    return torch.sign(v) * E2M1[idx]


def e4m3(x):
    return x.to(torch.float8_e4m3fn).to(torch.float32)


def nvfp4_dequant(packed, scales, s2):
    lo = (packed & 0xF).to(torch.int64)
    hi = (packed >> 4).to(torch.int64)
    codes = torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)
    mag = E2M1[codes & 7]
    val = torch.where(codes >= 8, -mag, mag)
    sc = scales.view(torch.float8_e4m3fn).to(torch.float32).repeat_interleave(16, dim=1)
    return (val * sc * s2).to(torch.bfloat16)


def nvfp4_fake(x, s):
    shp = x.shape
    xf = x.float().reshape(-1, 16)
    amax = xf.abs().amax(dim=1, keepdim=True)
    sb = e4m3((amax / (6.0 * s)).clamp(min=2.0 ** -9, max=448.0))
    t = sb * s
    return (e2m1_round(xf / t) * t).reshape(shp).to(x.dtype)


def mx_scale_exp(amax):
    """MXFP8 block exponent: clamp(ceil(log2(amax / 448)), -127, 127), exactly (amax 0 -> -127)."""
    r = amax / 448.0
    m, e = torch.frexp(r)  # r = m 2^e, m in [0.5, 1)
    c = torch.where(m == 0.5, e - 1, e)  # ceil(log2 r): exact powers of two stay
    c = torch.where(r > 0, c, torch.full_like(c, -127))
    return c.clamp(-127, 127)


def mxfp8_fake(x):
    """MXFP8 activation quantization (per 32 along the row, E8M0 scale, dynamic)."""
    shp = x.shape
    xf = x.float().reshape(-1, 32)
    e = mx_scale_exp(xf.abs().amax(dim=1, keepdim=True))
    q = e4m3((xf * torch.pow(2.0, -e.float())).clamp(-448.0, 448.0))
    return (q * torch.pow(2.0, e.float())).reshape(shp).to(x.dtype)


def fp8_fake(x, s):
    xf = x.float().clamp(-448.0 * s, 448.0 * s)
    return (e4m3(xf / s) * s).to(x.dtype)


def int8_fake(x, s):
    """INT8 per tensor: round half to even of fl32(x / s), saturating to [-128, 127]."""
    q = torch.round(x.float() / s).clamp(-128.0, 127.0)
    return (q * s).to(x.dtype)


def hadamard(x, b):
    """Normalized Walsh-Hadamard transform (Sylvester order) of blocks of b along the last dim."""
    h = torch.ones(1, 1)
    while h.shape[0] < b:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    xb = x.float().reshape(*x.shape[:-1], -1, b) @ h
    return (xb * torch.tensor(b ** -0.5, dtype=torch.float32)).reshape(x.shape).to(x.dtype)


def kv_fake(x, s, nvfp4):
    if nvfp4:  # k_scale = amax / 448: the global scale amax / (6 * 448)
        return nvfp4_fake(x, float(torch.tensor(s, dtype=torch.float32) / 6))
    return fp8_fake(x, s)


class Export:
    def __init__(self, d):
        self.f = safe_open(f"{d}/model.safetensors", "pt")
        self.keys = set(self.f.keys())
        with open(f"{d}/hf_quant_config.json") as f:
            self.kv_algo = json.load(f)["quantization"].get("kv_cache_quant_algo") or ""
        with open(f"{d}/calibd_report.json") as f:
            rot = json.load(f)["resolved"].get("kv_rotation", {})
        self.rot = [rot.get(n, 0) for n in "qkv"]

    def get(self, k):
        if k not in self.keys and k.startswith("model."):
            # a vision-language export (Qwen3.5-MoE) names the text model's modules
            # model.language_model.*; AutoModelForCausalLM loads them as model.*
            k = "model.language_model." + k[len("model."):]
        return self.f.get_tensor(k) if k in self.keys else None

    def module(self, mod):
        """(bf16 weight, activation fn or None): the input times the pre_quant_scale
        (a bf16 product), then the input quantizer."""
        w, fq = self.quantized(mod)
        pqs = self.get(mod + ".pre_quant_scale")
        if pqs is None:
            return w, fq
        return w, (lambda x: (fq or (lambda y: y))(x * pqs))

    def quantized(self, mod):
        w = self.get(mod + ".weight")
        if w is None:
            raise KeyError(mod)
        if w.dtype == torch.bfloat16:
            return w, None
        isc = self.get(mod + ".input_scale")
        ws = self.get(mod + ".weight_scale")
        if ws is not None and ws.dtype == torch.uint8 and w.dtype != torch.uint8:  # MXFP8, inputs too
            sc = torch.pow(2.0, ws.to(torch.float32) - 127).repeat_interleave(32, dim=1)
            return (w.to(torch.float32) * sc).to(torch.bfloat16), mxfp8_fake
        if w.dtype == torch.uint8 and ws.dtype == torch.uint8:  # MXFP4: E2M1, E8M0 per 32
            lo, hi = (w & 0xF).to(torch.int64), (w >> 4).to(torch.int64)
            codes = torch.stack([lo, hi], dim=-1).reshape(w.shape[0], -1)
            val = torch.where(codes >= 8, -E2M1[codes & 7], E2M1[codes & 7])
            sc = torch.pow(2.0, ws.to(torch.float32) - 127).repeat_interleave(32, dim=1)
            return (val * sc).to(torch.bfloat16), None
        if w.dtype == torch.uint8:
            wq = nvfp4_dequant(w, self.get(mod + ".weight_scale"), self.get(mod + ".weight_scale_2").item())
            fq = (lambda x, s=isc.item(): nvfp4_fake(x, s)) if isc is not None else None
            return wq, fq
        if w.dtype == torch.int8:  # INT8 per output channel: int8, int8_wo, int8_sq
            wq = (w.to(torch.float32) * ws.to(torch.float32)[:, None]).to(torch.bfloat16)
            fq = (lambda x, s=isc.item(): int8_fake(x, s)) if isc is not None else None
            return wq, fq
        ws = self.get(mod + ".weight_scale").item()
        wq = (w.to(torch.float32) * ws).to(torch.bfloat16)
        fq = (lambda x, s=isc.item(): fp8_fake(x, s)) if isc is not None else None
        return wq, fq


def fq_pre_hook(fq):
    def hook(_m, args):
        return (fq(args[0]),) + tuple(args[1:])
    return hook


import os
MODE = os.environ.get("REF_MODE", "wakqm")  # debugging: w weights, a activations, k KV


def main():
    src, qdir, toks, out = sys.argv[1:5]
    ex = Export(qdir)
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.bfloat16, attn_implementation="eager")
    kv = {}

    def fq_attention(module, q, k, v, mask, **kw):
        ks, vs, kb, vb = kv.get(module.layer_idx, (None, None, None, None))
        nv = ex.kv_algo.startswith("NVFP4")
        if "k" in MODE:
            q, k, v = [hadamard(t, b) if b else t for t, b in zip((q, k, v), ex.rot)]
        if ks is not None and "k" in MODE:
            k = kv_fake(k, ks, nv) if kb is None else kv_fake(k - kb, ks, nv) + kb
        if vs is not None and "k" in MODE:
            v = kv_fake(v, vs, nv) if vb is None else kv_fake(v - vb, vs, nv) + vb
        if hasattr(module, "sinks"):  # gpt_oss: its own eager attention (sinks)
            from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward
            return eager_attention_forward(module, q, k, v, mask, **kw)
        if os.environ.get("REF_ATTN") == "fp32":  # noise floor: attention in fp32
            o, w = sdpa_attention_forward(module, q.float(), k.float(), v.float(), mask, **kw)
            return o.to(q.dtype), w
        return sdpa_attention_forward(module, q, k, v, mask, **kw)

    AttentionInterface.register("calibd_fq", fq_attention)
    if model.config.model_type == "gpt_oss":  # its eager attention takes an additive mask
        from transformers.masking_utils import AttentionMaskInterface, eager_mask
        AttentionMaskInterface.register("calibd_fq", eager_mask)
    model.config._attn_implementation = "calibd_fq"
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and not name.endswith("lm_head") and not name.endswith(".gate"):
            try:
                w, fq = ex.module(name)
            except KeyError:
                continue
            if "w" in MODE:
                m.weight.data.copy_(w)
            isattn = "self_attn" in name
            if fq is not None and "a" in MODE and (("q" in MODE) if isattn else ("m" in MODE)):
                m.register_forward_pre_hook(fq_pre_hook(fq))
        if name.endswith("self_attn"):
            ks = ex.get(name + ".k_proj.k_scale")
            vs = ex.get(name + ".v_proj.v_scale")
            if ex.kv_algo and ks is None:  # declared without scales: 1.0, as the serving engines
                ks = vs = torch.tensor(1.0)
            # the affine KV cache's biases, [1, heads, 1, head_dim]: quantize
            # x - b, dequantize, add b (bf16 steps, as modelopt)
            kv[m.layer_idx] = (ks.item() if ks is not None else None, vs.item() if vs is not None else None,
                               ex.get(name + ".k_proj.k_bias"), ex.get(name + ".v_proj.v_bias"))
        if name.endswith("mlp.experts") and "w" in MODE:
            if hasattr(m, "gate_up_proj_bias"):
                oai_experts(ex, name, m)
            else:
                experts_forward(ex, name, m)
    ids = [json.loads(line)["input_ids"] for line in open(toks)]
    with torch.no_grad(), open(out, "wb") as f:
        for seq in ids:
            logits = model(torch.tensor([seq])).logits[0].to(torch.bfloat16)
            f.write(logits.view(torch.int16).numpy().tobytes())


def oai_experts(ex, name, m):
    """GPT-OSS: the fused 3-D experts as exported ([E, in, out] transposed, NVFP4 packed along
    in, gate/up interleaved), dequantized in place; inputs fake-quantized (gate_up: the hidden
    states before routing, down: the gated activations)."""
    def deq(proj):
        w = ex.get(f"{name}.{proj}")
        if w.dtype == torch.bfloat16:
            return w, None
        ws = ex.get(f"{name}.{proj}_weight_scale")
        isc = ex.get(f"{name}.{proj}_input_scale")
        if w.dtype == torch.uint8:
            E, _, out = w.shape
            wt = w.transpose(1, 2).reshape(E * out, -1).contiguous()
            st = ws.transpose(1, 2).reshape(E * out, -1).contiguous()
            s2 = ex.get(f"{name}.{proj}_weight_scale_2").item()
            d = nvfp4_dequant(wt, st, s2).reshape(E, out, -1).transpose(1, 2).contiguous()
            return d, (lambda x, s=isc.item(): nvfp4_fake(x, s)) if isc is not None else None
        d = (w.to(torch.float32) * ws.item()).to(torch.bfloat16)
        return d, (lambda x, s=isc.item(): fp8_fake(x, s)) if isc is not None else None

    gu, fgu = deq("gate_up_proj")
    dn, fdn = deq("down_proj")
    m.gate_up_proj.data.copy_(gu)
    m.down_proj.data.copy_(dn)
    act = "a" in MODE and "m" in MODE
    fwd, gate = m.forward, m._apply_gate
    if fdn is not None and act:
        m._apply_gate = lambda gu_: fdn(gate(gu_))
    if fgu is not None and act:
        m.forward = lambda h, *a, **k: fwd(fgu(h), *a, **k)


def experts_forward(ex, name, m):
    """Per-expert dequantized weights and input fake-quant (fused 3-D experts)."""
    n = m.gate_up_proj.shape[0]
    mods = []
    for e in range(n):
        g, fg = ex.module(f"{name}.{e}.gate_proj")
        u, fu = ex.module(f"{name}.{e}.up_proj")
        d, fd = ex.module(f"{name}.{e}.down_proj")
        gs = ex.get(f"{name}.{e}.gate_proj.input_scale")
        us = ex.get(f"{name}.{e}.up_proj.input_scale")
        if gs is not None and us is not None and us.item() > gs.item():
            fg = fu  # one fused gate|up GEMM: the larger input scale
        mods.append((torch.cat([g, u], 0), fg, d, fd))

    def forward(hidden, top_k_index, top_k_weights):
        outp = torch.zeros_like(hidden)
        for e in range(n):
            tok, slot = torch.where(top_k_index == e)
            if tok.numel() == 0:
                continue
            w13, fg, w2, fd = mods[e]
            x = hidden[tok]
            if fg is not None and "a" in MODE and "m" in MODE:
                x = fg(x)
            gate, up = F.linear(x, w13).chunk(2, dim=-1)
            h = m.act_fn(gate) * up
            if fd is not None and "a" in MODE and "m" in MODE:
                h = fd(h)
            y = F.linear(h, w2) * top_k_weights[tok, slot, None]
            outp.index_add_(0, tok, y.to(outp.dtype))
        return outp

    m.forward = forward


if __name__ == "__main__":
    main()
