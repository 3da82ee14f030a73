#!/usr/bin/env python3
"""Which rounding rules does transformers' own forward follow?  The two
checks behind docs/architectures.md "Attention" and "Experts and the MoE
sum" (found while closing the SmoothQuant gap, docs/smoothquant.md "Whole
model"), on a parity case's fixture and its first token row, on the CPU:

  * attention: every call of PyTorch's scaled_dot_product_attention is
    recomputed from its q, k, v with fp32 scores and softmax and either
    the probabilities normalised before P.V, bf16(e / l) V (transformers'
    eager form), or the unnormalised bf16(e) V divided by l at the end
    (SDPA's flash kernels, calibd's kernels/attention.c); printed: the
    outputs that differ from SDPA's own, per call;
  * router weights (MoE cases): the decoder outputs of the whole model
    with the routers' top-k weights as transformers returns them (bf16)
    and with the same weights kept in fp32; printed: per layer, the
    outputs that differ.

    python forward_formulas.py --fixture-bin BUILD/tests/fixtures/calibd-fixture \\
        --case qwen3_moe_fused
"""
import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gptq_model_diff import case_fixture, load_model  # noqa: E402


def attention_check(torch, model, row):
    import torch.nn.functional as F
    import transformers.integrations.sdpa_attention as sa
    calls, orig = [], F.scaled_dot_product_attention

    def spy(q, k, v, *a, **kw):
        out = orig(q, k, v, *a, **kw)
        calls.append((q, k, v, kw.get("scale"), out))
        return out

    sa.torch.nn.functional.scaled_dot_product_attention = spy
    try:
        with torch.no_grad():
            model(input_ids=torch.tensor([row]))
    finally:
        sa.torch.nn.functional.scaled_dot_product_attention = orig
    bf = lambda x: x.to(torch.bfloat16).float()  # noqa: E731
    for n, (q, k, v, scale, out) in enumerate(calls):
        rep = q.shape[1] // k.shape[1]
        kf, vf = k.repeat_interleave(rep, 1).float(), v.repeat_interleave(rep, 1).float()
        t, hd = q.shape[2], q.shape[3]
        s = (q.float() @ kf.transpose(-1, -2)) * (scale if scale else hd ** -0.5)
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        e = torch.exp(s - s.amax(-1, keepdim=True))
        l_ = e.sum(-1, keepdim=True)
        eager = (bf(e / l_) @ vf).to(torch.bfloat16)
        sdpa = ((bf(e) @ vf) / l_).to(torch.bfloat16)
        print("attention call %d: of %d outputs, %d differ from SDPA with the eager form, "
              "%d with the SDPA form" % (n, out.numel(), int((eager != out).sum()),
                                         int((sdpa != out).sum())))


def router_check(torch, transformers, fx, row):
    outs = []
    for fp32 in (False, True):
        model = load_model(torch, transformers, fx)
        got = {}
        for li, layer in enumerate(model.model.layers):
            gate = getattr(getattr(layer, "mlp", None), "gate", None)
            if fp32 and gate is not None and hasattr(gate, "top_k"):
                def fwd(h, g=gate):
                    h = h.reshape(-1, g.hidden_dim)
                    logits = torch.nn.functional.linear(h, g.weight)
                    p = torch.softmax(logits, dtype=torch.float, dim=-1)
                    w, idx = torch.topk(p, g.top_k, dim=-1)
                    if getattr(g, "norm_topk_prob", True):
                        w = w / w.sum(dim=-1, keepdim=True)
                    return logits, w, idx  # the weights stay fp32
                gate.forward = fwd
            layer.register_forward_hook(
                lambda m, i, o, li=li: got.__setitem__(li, (o[0] if isinstance(o, tuple) else o)))
        with torch.no_grad():
            model(input_ids=torch.tensor([row]))
        outs.append(got)
    for li in sorted(outs[0]):
        a, b = outs[0][li], outs[1][li]
        print("layer %d: %d of %d outputs differ with fp32 router weights" % (
            li, int((a != b).sum()), a.numel()))


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture-bin", required=True)
    ap.add_argument("--case", default="qwen3_moe_fused")
    ap.add_argument("--parity-dir", default=os.path.join(here, "..", "parity"))
    args = ap.parse_args()
    import torch
    import transformers
    with tempfile.TemporaryDirectory() as tmp:
        fx, tokens = case_fixture(args.fixture_bin, args.parity_dir, args.case, tmp)
        attention_check(torch, load_model(torch, transformers, fx), tokens[0])
        router_check(torch, transformers, fx, tokens[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
