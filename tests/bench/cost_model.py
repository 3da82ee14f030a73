#!/usr/bin/env python3
"""Per-layer cost model of a calibd job over R GPUs (issue 13 item 6).

Standard library only.  `python3 tests/bench/cost_model.py` prints the fit,
its check against the measured 1-GPU runs, and the predictions (the 8-layer
bench checkpoint on 1 and 2 GPUs, a DeepSeek-R1-sized job on 8 GPUs);
`--json` prints the same as JSON.  tests/bench/README.md ("Cost model")
explains every term; the measurements come from docs/measurements/.

    end to end = start + max(disk, calibrate + comm, quantize) + finish

disk      one node's disk reads the source and writes the output; on the
          measured machine both share one device, so their times add
calibrate per layer: a + b * tokens * flops(layer) / flops(bench layer) / R
          (the experts split by owner, everything else by micro-batch)
comm      per MoE layer: tokens * k * hidden * (dispatch + combine bytes)
          * (R-1)/R over R GPUs, plus the count exchange and the observer
          allreduces, at an assumed all-to-all bandwidth and latency
quantize  the export stage of every rank beside the calibration
"""
import argparse
import json
import sys

# ---- measurements on one H200 (docs/measurements/) -------------------------

# run_scaling.sh, warm page cache, --no-disk (2026-12-04-h200-quantize-scaling.txt):
# (tokens, layers, calibrate seconds, quantize stage seconds)
SCALING = [
    (65536, 8, 0.78, 2.77),
    (262144, 8, 1.04, 2.49),
    (1048576, 8, 3.24, 3.18),
    (262144, 4, 0.73, 1.55),
    (262144, 16, 1.99, 4.35),
]
# bench quantize, run 2 and run 3, cold and warm page cache
# (2026-12-04-h200-quantize-bench-2.txt, -3.txt)
BENCH_RUNS = [
    # name, read GB/s (None: warm), write GB/s, calibrate s, end to end s
    ("run 2 cold", 1.80, 1.54, 8.76, 10.23),
    ("run 2 warm", None, 1.54, 1.03, 3.07),
    ("run 3 cold", 1.38, 1.32, 10.53, 11.78),
    ("run 3 warm", None, 1.32, 1.23, 3.75),
]
START_S = 0.30   # load + tokenize (0.25-0.30 s measured)
FINISH_S = 0.50  # model-level tensors, side files, fsync, rename (0.46-0.52 s cold)


def solve3(rows, rhs):
    """Least squares with 3 unknowns (normal equations, Gauss-Jordan)."""
    m = [[sum(r[i] * r[j] for r in rows) for j in range(3)] +
         [sum(r[i] * y for r, y in zip(rows, rhs))] for i in range(3)]
    for i in range(3):
        p = max(range(i, 3), key=lambda k: abs(m[k][i]))
        m[i], m[p] = m[p], m[i]
        for k in range(3):
            if k != i:
                f = m[k][i] / m[i][i]
                m[k] = [a - f * b for a, b in zip(m[k], m[i])]
    return [m[i][3] / m[i][i] for i in range(3)]


# ---- model shapes -----------------------------------------------------------

class Model:
    def __init__(self, **kw):
        self.__dict__.update(kw)

    def attn_params(self):
        if self.mla:
            q = self.hidden * self.q_lora + self.q_lora * self.heads * (self.qk_nope + self.qk_rope)
            kv = self.hidden * (self.kv_lora + self.qk_rope) + \
                self.kv_lora * self.heads * (self.qk_nope + self.v_head)
            return q + kv + self.heads * self.v_head * self.hidden
        hd = self.head_dim
        return self.hidden * hd * (2 * self.heads + 2 * self.kv_heads)

    def expert_params(self):
        return 3 * self.hidden * self.moe_inter

    def layer_flops(self, moe, seq, k):
        """Forward FLOPs per token of one layer (GEMMs 2·m·n, causal attention
        over seq/2 positions on average)."""
        d_qk = (self.qk_nope + self.qk_rope) if self.mla else self.head_dim
        d_v = self.v_head if self.mla else self.head_dim
        f = 2 * self.attn_params() + 2 * self.heads * (d_qk + d_v) * seq / 2
        if moe:
            f += 2 * self.hidden * self.experts                       # router
            f += 2 * (k + self.shared) * self.expert_params()         # routed + shared
        else:
            f += 2 * 3 * self.hidden * self.dense_inter
        return f

    def params(self):
        moe = self.moe_layers * (self.experts + self.shared) * self.expert_params()
        moe += self.moe_layers * self.hidden * self.experts
        dense = self.dense_layers * 3 * self.hidden * self.dense_inter
        attn = (self.moe_layers + self.dense_layers) * self.attn_params()
        emb = 2 * self.vocab * self.hidden
        return moe + dense + attn + emb

    def routed_params(self):
        return self.moe_layers * self.experts * self.expert_params()


BENCH = Model(name="bench (Qwen3-30B-A3B-shaped, 8 layers)", hidden=2048, moe_inter=768,
              experts=128, shared=0, top_k=8, heads=32, kv_heads=4, head_dim=128, mla=False,
              moe_layers=8, dense_layers=0, dense_inter=0, vocab=151936,
              source_gb=11.21, output_gb=4.27)
# DeepSeek-R1 (config.json of deepseek-ai/DeepSeek-R1, without the MTP layer):
# 61 layers, 3 dense (intermediate 18432), 58 MoE of 256 routed experts of
# 2048 + 1 shared, top-8, MLA (q_lora 1536, kv_lora 512, 128 heads, nope 128,
# rope 64, v 128), vocab 129280.  Source FP8 (1 byte, 128x128 block scales),
# embedding, lm_head and norms bf16.  Output: routed experts NVFP4 (0.5 byte +
# one FP8 scale per 16), the rest written bf16.
R1 = Model(name="DeepSeek-R1-sized", hidden=7168, moe_inter=2048, experts=256, shared=1,
           top_k=8, heads=128, kv_heads=128, head_dim=0, mla=True, q_lora=1536,
           kv_lora=512, qk_nope=128, qk_rope=64, v_head=128, moe_layers=58,
           dense_layers=3, dense_inter=18432, vocab=129280)
_emb = 2 * R1.vocab * R1.hidden
R1.source_gb = ((R1.params() - _emb) * (1 + 4 / (128 * 128)) + _emb * 2) / 1e9
R1.output_gb = (R1.routed_params() * (0.5 + 1 / 16) + (R1.params() - R1.routed_params()) * 2) / 1e9

# ---- the fit ---------------------------------------------------------------


def fit():
    """calibrate(T, L) = c0 + c1*L + c2*L*T on one H200 (T in tokens)."""
    c = solve3([[1, L, L * T] for T, L, _, _ in SCALING], [t for _, _, t, _ in SCALING])
    q = solve3([[1, L, 0] for T, L, _, _ in SCALING] + [[0, 0, 1]],
               [t for _, _, _, t in SCALING] + [0])
    return {"c0_s": c[0], "per_layer_s": c[1], "per_token_layer_s": c[2],
            "quantize_fixed_s": q[0], "quantize_per_layer_s": q[1]}


# ---- the prediction ----------------------------------------------------------


def predict(m, f, R, tokens, seq, disk, net, k=None, combine_bytes=2, act_bytes=2, export_ranks=1):
    """Seconds of each term for model m over R GPUs of one node; the export
    stage runs on export_ranks of them (R: each rank quantizes and writes
    its own experts, rank 0 the rest — routed experts are ~97 % of R1's
    weights; 1: the export on global rank 0 alone, as before that landed)."""
    k = k or m.top_k
    bench_flops = BENCH.layer_flops(True, 512, BENCH.top_k)
    calib = f["c0_s"]
    for moe, n in ((True, m.moe_layers), (False, m.dense_layers)):
        scale = m.layer_flops(moe, seq, k) / bench_flops
        calib += n * (f["per_layer_s"] + f["per_token_layer_s"] * tokens * scale / R)
    # bytes each GPU sends per MoE layer (docs/expert_parallel.md
    # "Communication bytes", engine/calib/ranks.c): its tokens' rows to the
    # owners of their k experts and the outputs back, (R-1)/R of the
    # (token, slot) pairs leaving the rank; per micro-batch round the
    # per-expert counts (u64) to the other ranks; per layer the observer
    # reductions, (12 + 2E) slots of 4 + 8 + 8 bytes
    slots = tokens * k / R
    a2a_bytes = slots * m.hidden * (act_bytes + combine_bytes) * (R - 1) / R
    rounds = max(1, -(-tokens // R // net["micro_batch_tokens"]))
    counts_bytes = rounds * 8 * m.experts * (R - 1) / R
    obs_bytes = (12 + 2 * m.experts) * 20
    comm_layer = 0.0
    if R > 1:
        # 3 exchanges per round: counts, rows out, outputs back
        comm_layer = (a2a_bytes + counts_bytes + obs_bytes) / net["gbps"] / 1e9 + \
            rounds * 3 * net["latency_s"]
    comm = m.moe_layers * comm_layer
    q_layer = f["quantize_per_layer_s"] * (m.experts * m.expert_params()) / \
        (BENCH.experts * BENCH.expert_params())
    quantize = f["quantize_fixed_s"] + m.moe_layers * q_layer / export_ranks
    read = 0.0 if disk["read"] is None else m.source_gb / disk["read"]
    write = m.output_gb / disk["write"]
    disk_s = read + write if disk["shared"] else max(read, write)
    body = max(disk_s, calib + comm, quantize)
    total = START_S + body + FINISH_S
    dom = max((("disk read + write" if disk["shared"] else "disk", disk_s),
               ("calibrate + comm", calib + comm), ("quantize", quantize)), key=lambda x: x[1])[0]
    if dom.startswith("disk") and read > write:
        dom += " (read)"
    return {"R": R, "tokens": tokens, "read_s": read, "write_s": write, "calibrate_s": calib,
            "comm_s": comm, "comm_gb_per_gpu_per_layer": (a2a_bytes + counts_bytes + obs_bytes) / 1e9
            if R > 1 else 0.0, "quantize_s": quantize, "start_s": START_S, "finish_s": FINISH_S,
            "total_s": total, "dominant": dom}


DISKS = {
    # measured on the H200 machine (bench run 3; run 2 read 1.80, wrote 1.54)
    "h200-vm": {"read": 1.38, "write": 1.32, "shared": True,
                "what": "the measured H200 machine's disk: read 1.38, write 1.32 GB/s, one device"},
    "warm": {"read": None, "write": 1.32, "shared": True,
             "what": "source in the page cache, write 1.32 GB/s"},
    # ASSUMED, not measured: a DGX-H200-class node's local NVMe RAID 0
    "nvme": {"read": 20.0, "write": 10.0, "shared": False,
             "what": "ASSUMED local NVMe RAID 0: read 20, write 10 GB/s, independent"},
}
# ASSUMED, not measured: NCCL all-to-all per GPU over NVLink / NVSwitch
NET = {"gbps": 400.0, "latency_s": 30e-6, "micro_batch_tokens": 65536}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--gbps", type=float, default=NET["gbps"],
                    help="all-to-all GB/s per GPU (assumed %(default)s)")
    ap.add_argument("--combine-bytes", type=int, default=2,
                    help="bytes per combined value (2: bf16, 4: fp32)")
    a = ap.parse_args()
    NET["gbps"] = a.gbps
    f = fit()
    out = {"fit": f, "checks": [], "predictions": []}
    for name, rd, wr, cal, e2e in BENCH_RUNS:
        p = predict(BENCH, f, 1, 262144, 512, {"read": rd, "write": wr, "shared": True}, NET)
        out["checks"].append({"run": name, "measured_s": e2e, "model_s": p["total_s"],
                              "calibrate_measured_s": cal})
    # (name, model, GPUs, tokens, seq, disk, GPUs running the export stage)
    cases = [("bench, 1 GPU", BENCH, 1, 262144, 512, "h200-vm", 1),
             ("bench, 2 GPUs", BENCH, 2, 262144, 512, "h200-vm", 1),
             ("bench, 1 GPU", BENCH, 1, 262144, 512, "warm", 1),
             ("bench, 2 GPUs", BENCH, 2, 262144, 512, "warm", 1),
             ("R1, 8 GPUs", R1, 8, 512 * 4096, 4096, "h200-vm", 1),
             ("R1, 8 GPUs", R1, 8, 512 * 4096, 4096, "nvme", 1),
             ("R1, 8 GPUs", R1, 8, 512 * 4096, 4096, "nvme", 8),
             ("R1, 1 GPU", R1, 1, 512 * 4096, 4096, "nvme", 1)]
    for name, m, R, T, seq, dk, xr in cases:
        p = predict(m, f, R, T, seq, DISKS[dk], NET, combine_bytes=a.combine_bytes, export_ranks=xr)
        if xr > 1:
            name += " xR"
        p.update({"case": name, "disk": dk})
        out["predictions"].append(p)
    if a.json:
        json.dump(out, sys.stdout, indent=1)
        print()
        return
    print("fit on one H200 (run_scaling.sh, warm): calibrate = %.3f s + %.1f ms/layer + "
          "%.3f us per token-layer (bench layer, %.0f MFLOP/token)" %
          (f["c0_s"], 1e3 * f["per_layer_s"], 1e6 * f["per_token_layer_s"],
           BENCH.layer_flops(True, 512, 8) / 1e6))
    print("  = %.0f TFLOP/s effective; quantize stage %.2f s + %.0f ms per layer of 128 experts "
          "(writer-bound: an upper bound)" %
          (BENCH.layer_flops(True, 512, 8) / f["per_token_layer_s"] / 1e12, f["quantize_fixed_s"],
           1e3 * f["quantize_per_layer_s"]))
    print("R1 layer: %.0f MFLOP/token (MoE, seq 4096) = %.1f x the bench layer; source %.0f GB, "
          "output %.0f GB; %.0f B params" %
          (R1.layer_flops(True, 4096, 8) / 1e6,
           R1.layer_flops(True, 4096, 8) / BENCH.layer_flops(True, 512, 8), R1.source_gb,
           R1.output_gb, R1.params() / 1e9))
    print("all-to-all (ASSUMED): %.0f GB/s per GPU, %.0f us per collective, combine %d bytes\n" %
          (NET["gbps"], NET["latency_s"] * 1e6, a.combine_bytes))
    print("check against the measured 1-GPU runs (bench checkpoint):")
    for c in out["checks"]:
        print("  %-11s measured %6.2f s  model %6.2f s" % (c["run"], c["measured_s"], c["model_s"]))
    print()
    hdr = ("case", "disk", "read", "write", "calib", "comm", "GB/GPU/L", "quant", "total", "dominant")
    print("%-14s %-8s %7s %7s %7s %6s %8s %6s %8s  %s" % hdr)
    for p in out["predictions"]:
        print("%-14s %-8s %7.1f %7.1f %7.2f %6.2f %8.2f %6.1f %8.1f  %s" %
              (p["case"], p["disk"], p["read_s"], p["write_s"], p["calibrate_s"], p["comm_s"],
               p["comm_gb_per_gpu_per_layer"], p["quantize_s"], p["total_s"], p["dominant"]))
    print("\ndisks: " + "; ".join("%s = %s" % (k, v["what"]) for k, v in DISKS.items()))
    b1, b2 = out["predictions"][0], out["predictions"][1]
    tok1 = f["per_token_layer_s"] * 262144 * BENCH.moe_layers
    print("bench on 2 GPUs: calibrate %.2f -> %.2f s (%.2f x); its token-proportional part "
          "%.2f -> %.2f s + comm %.2f s (%.2f x)" %
          (b1["calibrate_s"], b2["calibrate_s"], b1["calibrate_s"] / b2["calibrate_s"], tok1,
           tok1 / 2, b2["comm_s"], tok1 / (tok1 / 2 + b2["comm_s"])))
    r = out["predictions"][4]
    print("xR: each rank exports its own experts (docs/expert_parallel.md); otherwise global rank 0 exports everything")
    need = (R1.source_gb + R1.output_gb) / (600 - START_S - FINISH_S)
    print("R1 in 10 minutes needs the calibration beside it (%.0f s) and a disk of %.2f GB/s "
          "for read + write on one device (the measured one: %.2f)" %
          (r["calibrate_s"] + r["comm_s"], need, DISKS["h200-vm"]["read"]))


if __name__ == "__main__":
    main()
