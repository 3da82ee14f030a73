#!/usr/bin/env python3
"""Independent numpy re-statement of the HF forward (bf16 rounding points
of docs/architectures.md "Common structure") for calibd fixtures, used to
cross-check the engine where torch is not installed.  Not a substitute for hf_reference.py.

  python3 np_reference.py MODEL_DIR TOKENS.jsonl [OUT_DIR]
prints JSON {input_amax, kv_amax}; with OUT_DIR writes stats.json and hidden.safetensors
in hf_reference.py's format (equal-length sequences) to exercise test_parity.
Supports the fixture archs qwen3_moe, qwen2_moe, mixtral, olmoe, llama, qwen2, qwen3
(packed sequences, eager expert combine)."""
import json, math, os, struct, sys
import numpy as np

def bf(x):
    x = np.asarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    u = (u + 0x7fff + ((u >> 16) & 1)) >> 16 << 16
    return u.astype(np.uint32).view(np.float32)

def load(d):
    p = os.path.join(d, "model.safetensors")
    b = open(p, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    h = json.loads(b[8:8 + n]); base = 8 + n; t = {}
    for k, v in h.items():
        if k == "__metadata__": continue
        s, e = v["data_offsets"]; raw = b[base + s: base + e]
        if v["dtype"] == "BF16":
            a = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif v["dtype"] == "F32":
            a = np.frombuffer(raw, np.float32)
        else:
            raise SystemExit("dtype " + v["dtype"])
        t[k] = a.reshape(v["shape"])
    return t

def rms(x, w, eps):
    v = (x * x).mean(-1, keepdims=True, dtype=np.float32)
    n = x * (np.float32(1) / np.sqrt(v + np.float32(eps)))
    return bf(w * bf(n))

def lin(x, w, b=None):
    y = x.astype(np.float32) @ w.T.astype(np.float32)
    if b is not None: y = y + b
    return bf(y)

def main():
    d, tokf = sys.argv[1:3]
    cfg = json.load(open(os.path.join(d, "config.json")))
    T = load(d); mt = cfg["model_type"]
    seqs = [json.loads(l)["input_ids"] for l in open(tokf) if l.strip()]
    H = cfg["hidden_size"]; nh = cfg["num_attention_heads"]; nkv = cfg.get("num_key_value_heads") or nh
    hd = cfg.get("head_dim") or H // nh; eps = cfg["rms_norm_eps"]
    rp = cfg.get("rope_parameters") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    inv = (np.float32(1) / np.power(np.float32(theta), np.arange(0, hd, 2, dtype=np.float32) / np.float32(hd))).astype(np.float32)
    rs = cfg.get("rope_scaling") or {}
    if rs.get("rope_type") == "llama3":
        f, lo, hi, old = [np.float32(rs[k]) for k in ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")]
        wl = np.float32(2 * math.pi) / inv
        fl = np.where(wl > old / lo, inv / f, inv).astype(np.float32)
        sm = (old / wl - lo) / (hi - lo)
        smi = ((1 - sm) * fl / f + sm * fl).astype(np.float32)
        med = ~(wl < old / hi) & ~(wl > old / lo)
        inv = np.where(med, smi, fl).astype(np.float32)
    L = cfg["num_hidden_layers"]; amax = {}; kv = {}; hidden = {}; seen = {}
    E = cfg.get("num_experts") or cfg.get("num_local_experts") or 0
    k = cfg.get("num_experts_per_tok", 0)
    mlp_only = set(cfg.get("mlp_only_layers") or []); step = cfg.get("decoder_sparse_step", 1)
    renorm = True if mt == "mixtral" else cfg.get("norm_topk_prob", False)
    def put(n, x):
        if x.size: amax[n] = max(amax.get(n, 0.0), float(np.abs(x).max()))
    xs = []
    for s in seqs: xs.append(T["model.embed_tokens.weight"][np.array(s)].copy())
    for l in range(L):
        P = f"model.layers.{l}."
        for si, x in enumerate(xs):
            S = x.shape[0]
            h = rms(x, T[P + "input_layernorm.weight"], eps); put(P + "self_attn.q_proj", h)
            g = lambda n: T.get(P + "self_attn." + n)
            q = lin(h, g("q_proj.weight"), g("q_proj.bias")); kk = lin(h, g("k_proj.weight"), g("k_proj.bias"))
            v = lin(h, g("v_proj.weight"), g("v_proj.bias"))
            if mt == "olmoe":
                q = rms(q, g("q_norm.weight"), eps); kk = rms(kk, g("k_norm.weight"), eps)
            q = q.reshape(S, nh, hd); kk = kk.reshape(S, nkv, hd); v = v.reshape(S, nkv, hd)
            if g("q_norm.weight") is not None and mt != "olmoe":
                q = rms(q, g("q_norm.weight"), eps); kk = rms(kk, g("k_norm.weight"), eps)
            ang = (np.arange(S, dtype=np.float32)[:, None] * inv[None, :]).astype(np.float32)
            c = bf(np.cos(np.concatenate([ang, ang], -1)))[:, None, :]; sn = bf(np.sin(np.concatenate([ang, ang], -1)))[:, None, :]
            def rope(t):
                half = hd // 2; rh = np.concatenate([-t[..., half:], t[..., :half]], -1)
                return bf(bf(t * c) + bf(rh * sn))
            q = rope(q); kk = rope(kk)
            a = kv.setdefault(P + "self_attn", [0.0, 0.0]); a[0] = max(a[0], float(np.abs(kk).max())); a[1] = max(a[1], float(np.abs(v).max()))
            grp = nh // nkv; out = np.zeros((S, nh, hd), np.float32)
            for hh in range(nh):
                sc = (q[:, hh, :] @ kk[:, hh // grp, :].T) * np.float32(hd ** -0.5)
                sc = np.where(np.tril(np.ones((S, S), bool)), sc, -np.inf).astype(np.float32)
                e = np.exp(sc - sc.max(-1, keepdims=True)); p = bf(e / e.sum(-1, keepdims=True))
                out[:, hh, :] = bf(p @ v[:, hh // grp, :])
            o = out.reshape(S, nh * hd); put(P + "self_attn.o_proj", o)
            x = bf(x + lin(o, g("o_proj.weight"), g("o_proj.bias")))
            h = rms(x, T[P + "post_attention_layernorm.weight"], eps)
            moe = E and l not in mlp_only and (l + 1) % step == 0
            if not moe:
                put(P + "mlp.gate_proj", h)
                gt = lin(h, T[P + "mlp.gate_proj.weight"]); up = lin(h, T[P + "mlp.up_proj.weight"])
                act = bf(bf(gt / (1 + np.exp(-gt))) * up); put(P + "mlp.down_proj", act)
                x = bf(x + lin(act, T[P + "mlp.down_proj.weight"]))
            else:
                blk = "block_sparse_moe" if P + "block_sparse_moe.gate.weight" in T else "mlp"
                put(P + "mlp.gate", h)
                lg = lin(h, T[P + blk + ".gate.weight"])
                pr = np.exp(lg - lg.max(-1, keepdims=True)); pr = (pr / pr.sum(-1, keepdims=True)).astype(np.float32)
                idx = np.argsort(-pr, -1, kind="stable")[:, :k]; w = np.take_along_axis(pr, idx, -1)
                if renorm: w = (w / w.sum(-1, keepdims=True)).astype(np.float32)
                acc = np.zeros_like(h)
                names = ("w1", "w3", "w2") if blk == "block_sparse_moe" else ("gate_proj", "up_proj", "down_proj")
                for e in range(E):
                    rows, slot = np.nonzero(idx == e)
                    if not len(rows): continue
                    xe = h[rows]; put(P + f"mlp.experts.{e}.gate_up_proj", xe)
                    for nm in ("gate_up_proj", "down_proj"):
                        seen[P + f"mlp.experts.{e}.{nm}"] = seen.get(P + f"mlp.experts.{e}.{nm}", 0) + len(rows)
                    if P + f"mlp.experts.gate_up_proj" in T:
                        gu = T[P + "mlp.experts.gate_up_proj"][e]; I = gu.shape[0] // 2
                        gw, uw, dw = gu[:I], gu[I:], T[P + "mlp.experts.down_proj"][e]
                    else:
                        gw, uw, dw = [T[P + f"{blk}.experts.{e}.{n}.weight"] for n in names]
                    gt = lin(xe, gw); up = lin(xe, uw); act = bf(bf(gt / (1 + np.exp(-gt))) * up)
                    put(P + f"mlp.experts.{e}.down_proj", act)
                    y = lin(act, dw); acc[rows] = bf(acc[rows] + bf(y * w[rows, slot][:, None]))
                if P + "mlp.shared_expert.gate_proj.weight" in T:
                    put(P + "mlp.shared_expert.gate_proj", h)
                    gt = lin(h, T[P + "mlp.shared_expert.gate_proj.weight"]); up = lin(h, T[P + "mlp.shared_expert.up_proj.weight"])
                    act = bf(bf(gt / (1 + np.exp(-gt))) * up); put(P + "mlp.shared_expert.down_proj", act)
                    sy = lin(act, T[P + "mlp.shared_expert.down_proj.weight"])
                    sg = bf(1 / (1 + np.exp(-lin(h, T[P + "mlp.shared_expert_gate.weight"]))))
                    acc = bf(acc + bf(sg * sy))
                x = bf(x + acc)
            xs[si] = x
        hidden[f"layer.{l}"] = np.stack(xs).astype(np.float32)
    res = {"input_amax": amax, "tokens_seen": seen, "kv_amax": {k: {"k_amax": v[0], "v_amax": v[1]} for k, v in kv.items()}}
    if len(sys.argv) > 3:
        out = sys.argv[3]; os.makedirs(out, exist_ok=True)
        json.dump(res, open(os.path.join(out, "stats.json"), "w"), indent=1, sort_keys=True)
        hdr, off, blobs = {}, 0, []
        for k, a in hidden.items():
            b = np.ascontiguousarray(a).tobytes(); hdr[k] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
            off += len(b); blobs.append(b)
        h = json.dumps(hdr).encode(); h += b" " * ((8 - len(h) % 8) % 8)
        with open(os.path.join(out, "hidden.safetensors"), "wb") as f:
            f.write(struct.pack("<Q", len(h))); f.write(h); [f.write(b) for b in blobs]
    else:
        json.dump(res, sys.stdout, indent=1, sort_keys=True)

main()
