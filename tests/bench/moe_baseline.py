"""Performance baseline for a Qwen3-30B-A3B-shaped MoE (run where torch + transformers + a GPU are).
(Copied from the project's shared tools so that the device machine, which only receives this
repository, can run it; tests/bench/run_calibrate_bench.sh runs it next to `calibd bench calibrate`.
SKIP_EXPORT=1 skips the PyTorch NVFP4 export step; GEN_ONLY=1 stops after writing the checkpoint
and the tokens.)

Generates the synthetic checkpoint (env D, default /tmp/q30; NL layers, default 8; NE experts, default
128) unless it exists,
writes the calibration tokens it uses to $D.tokens.jsonl (NS sequences x SEQ tokens) so another tool
can use the same ones, then calibrates and exports the way modelopt does it (transformers on the GPU,
eager experts, F.linear hooks recording max|x|, NVFP4 experts-only export in PyTorch), timing each
phase, and times transformers' own grouped_mm forward without hooks. Prints JSON."""
import json, math, os, sys, time
import torch, torch.nn.functional as F
from transformers import AutoConfig, AutoModelForCausalLM
from safetensors.torch import save_file
NL = int(os.environ.get("NL", "8")); NE = int(os.environ.get("NE", "128")); NS = int(os.environ.get("NS", "512")); SEQ = int(os.environ.get("SEQ", "512")); BS = int(os.environ.get("BS", "16"))
D = os.environ.get("D", "/tmp/q30"); res = {"layers": NL, "samples": NS, "seq": SEQ, "batch": BS}
cfg = AutoConfig.for_model("qwen3_moe", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
    moe_intermediate_size=768, num_hidden_layers=NL, num_attention_heads=32, num_key_value_heads=4, head_dim=128,
    num_experts=NE, num_experts_per_tok=8, norm_topk_prob=True, max_position_embeddings=4096, rope_theta=1e6,
    tie_word_embeddings=False)
t = time.time()
made = os.path.exists(os.path.join(D, "config.json"))
if not made:
  with torch.device("cuda"):
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
  with torch.no_grad():
    for n, p in model.named_parameters():
        if p.dim() >= 2: p.normal_(0, 1.0 / math.sqrt(p.shape[-1]))
        elif "norm" in n: p.fill_(1.0)
  model.save_pretrained(D, max_shard_size="5GB")
  del model; torch.cuda.empty_cache(); res["make_s"] = time.time() - t
res["bytes_on_disk_GB"] = sum(os.path.getsize(os.path.join(D, f)) for f in os.listdir(D) if f.endswith(".safetensors")) / 1e9
if os.environ.get("KEEP_CACHE", "0") != "1":
    os.system("sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null")
ids = torch.randint(0, cfg.vocab_size, (NS, SEQ), generator=torch.Generator().manual_seed(0))
with open(D.rstrip("/") + ".tokens.jsonl", "w") as f:
    for row in ids.tolist(): f.write(json.dumps({"input_ids": row}) + "\n")
if os.environ.get("GEN_ONLY", "0") == "1":  # checkpoint and tokens only
    print(json.dumps(res, indent=1)); sys.exit(0)
# --- modelopt-method baseline
torch.cuda.synchronize(); t0 = time.time()
model = AutoModelForCausalLM.from_pretrained(D, dtype=torch.bfloat16, device_map="cuda", experts_implementation="eager")
model.eval(); torch.cuda.synchronize(); res["load_s"] = time.time() - t0
res["params_B"] = sum(p.numel() for p in model.parameters()) / 1e9
wmap = {}
for n, p in model.named_parameters():
    if p.dim() == 2: wmap[p.data_ptr()] = n
    if p.dim() == 3:
        for e in range(p.shape[0]): wmap[p[e].data_ptr()] = f"{n}.{e}"
amax = {}
orig = F.linear
def lin(x, w, b=None):
    k = w.data_ptr()
    if x.numel():
        a = x.detach().abs().amax().float()
        prev = amax.get(k)
        amax[k] = a if prev is None else torch.maximum(prev, a)
    return orig(x, w, b)
F.linear = lin; torch.nn.functional.linear = lin
t0 = time.time()
with torch.no_grad():
    for i in range(0, NS, BS):
        model(input_ids=ids[i:i + BS].cuda(), use_cache=False)
torch.cuda.synchronize(); res["calib_eager_hooks_s"] = time.time() - t0
F.linear = orig; torch.nn.functional.linear = orig
res["calib_tokens_per_s"] = NS * SEQ / res["calib_eager_hooks_s"]
# --- export experts NVFP4 (vectorised torch), everything else copied
def nvfp4(W, amax_w):
    S2 = amax_w.float() * (1.0 / 2688.0)
    o, i = W.shape[-2], W.shape[-1]
    blk = W.float().reshape(*W.shape[:-1], i // 16, 16)
    s = blk.abs().amax(-1) / (6.0 * S2[..., None, None])
    s = torch.where(s == 0, torch.ones_like(s), s).clamp(2 ** -9, 448.0).to(torch.float8_e4m3fn)
    T = s.float() * S2[..., None, None]
    q = blk / T[..., None]
    a = q.abs(); bounds = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0], device=W.device)
    code = torch.bucketize(a, bounds, right=False)
    code = code + ((a == 0.75) | (a == 1.75) | (a == 3.5)).long()
    code = code | ((q < 0).long() << 3)
    code = code.reshape(*W.shape).to(torch.uint8)
    packed = code[..., 0::2] | (code[..., 1::2] << 4)
    return packed, s, S2
SKIP_EXPORT = os.environ.get("SKIP_EXPORT", "0") == "1"
t0 = time.time()
out = {}; shard = 0; size = 0
OUTD = D.rstrip("/") + "_baseline_out"; os.makedirs(OUTD, exist_ok=True)
def flush():
    global out, shard, size
    if out:
        save_file({k: v.contiguous().cpu() for k, v in out.items()}, f"{OUTD}/model-{shard:05d}.safetensors", metadata={"format": "pt"})
        shard += 1; out = {}; size = 0
with torch.no_grad():
    sd = {} if SKIP_EXPORT else model.state_dict()
    for n, p in sd.items():
        if n.endswith("experts.gate_up_proj") or n.endswith("experts.down_proj"):
            E = p.shape[0]; base = n.rsplit(".", 1)[0]
            if n.endswith("gate_up_proj"):
                I = p.shape[1] // 2
                am = p.abs().amax(dim=(1, 2))
                for e in range(E):
                    for j, nm in enumerate(("gate_proj", "up_proj")):
                        pk, s, S2 = nvfp4(p[e, j * I:(j + 1) * I], am[e])
                        out[f"{base}.{e}.{nm}.weight"] = pk; out[f"{base}.{e}.{nm}.weight_scale"] = s; out[f"{base}.{e}.{nm}.weight_scale_2"] = S2
            else:
                am = p.abs().amax(dim=(1, 2))
                for e in range(E):
                    pk, s, S2 = nvfp4(p[e], am[e])
                    out[f"{base}.{e}.down_proj.weight"] = pk; out[f"{base}.{e}.down_proj.weight_scale"] = s; out[f"{base}.{e}.down_proj.weight_scale_2"] = S2
            size += p.numel() // 3
        else:
            out[n] = p; size += p.numel() * 2
        if size > 5e9: flush()
    flush()
torch.cuda.synchronize(); res["export_s"] = None if SKIP_EXPORT else time.time() - t0
res["baseline_total_s"] = res["load_s"] + res["calib_eager_hooks_s"] + (res["export_s"] or 0)
# --- transformers default (grouped_mm) forward, no hooks: what fast PyTorch does
model.set_experts_implementation("grouped_mm") if hasattr(model, "set_experts_implementation") else None
best = None
for rep in range(2):  # the first pass warms up grouped_mm; the best of two is reported
    torch.cuda.synchronize(); t0 = time.time()
    with torch.no_grad():
        for i in range(0, NS, BS):
            model(input_ids=ids[i:i + BS].cuda(), use_cache=False)
    torch.cuda.synchronize(); dt = time.time() - t0
    best = dt if best is None else min(best, dt)
res["forward_grouped_mm_s"] = best
res["forward_grouped_mm_tokens_per_s"] = NS * SEQ / res["forward_grouped_mm_s"]
res["peak_gpu_GB"] = torch.cuda.max_memory_allocated() / 1e9
# floors
res["expert_gemm_TFLOP_topk"] = NS * SEQ * 8 * 3 * 2 * 2048 * 768 * NL / 1e12
print(json.dumps(res, indent=1))
