"""Writes a synthetic Qwen3.5-MoE (text-only class, transformers' own save_pretrained) with the
real per-layer shapes of the 35B-A3B release -- transformers' qwen3_5_moe_text defaults: hidden
2048, 256 experts of 512 (top-8) plus a shared expert, 16/2 attention heads of 256, Gated DeltaNet
16/32 heads of 128, 3 linear-attention layers to 1 full -- with NL layers (default 4), random
weights, and NS x SEQ calibration tokens in $D.tokens.jsonl, for `calibd bench calibrate`
(tests/bench/run_qwen35_bench.sh).  Env: D (default /tmp/q35), NL, NS (256), SEQ (512);
SMALL=1 shrinks every dimension for a quick CPU check of the layout.  Prints JSON.
"""
import json, math, os, time
import torch
from transformers import AutoConfig, AutoModelForCausalLM

D = os.environ.get("D", "/tmp/q35")
NL = int(os.environ.get("NL", "4")); NS = int(os.environ.get("NS", "256")); SEQ = int(os.environ.get("SEQ", "512"))
kw = dict(num_hidden_layers=NL, tie_word_embeddings=False)
if os.environ.get("SMALL") == "1":
    kw.update(vocab_size=512, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              num_experts=8, moe_intermediate_size=32, shared_expert_intermediate_size=32,
              linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16, linear_value_head_dim=16)
cfg = AutoConfig.for_model("qwen3_5_moe_text", **kw)
cfg.layer_types = cfg.layer_types[:NL]
res = {"layers": NL, "samples": NS, "seq": SEQ, "layer_types": cfg.layer_types}
dev = "cuda" if torch.cuda.is_available() else "cpu"
t = time.time()
if not os.path.exists(os.path.join(D, "config.json")):
    with torch.device(dev):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() >= 2:
                p.normal_(0, 1.0 / math.sqrt(p.shape[-1]))
            elif "A_log" in n:
                p.uniform_(0, math.log(16.0))
            elif "dt_bias" in n:
                p.fill_(1.0)
            elif "norm" in n:
                p.zero_() if "linear_attn.norm" not in n else p.fill_(1.0)
    model.save_pretrained(D, max_shard_size="5GB")
    del model
    res["make_s"] = round(time.time() - t, 1)
res["bytes_on_disk_GB"] = round(sum(os.path.getsize(os.path.join(D, f)) for f in os.listdir(D)
                                    if f.endswith(".safetensors")) / 1e9, 2)
ids = torch.randint(0, cfg.vocab_size, (NS, SEQ), generator=torch.Generator().manual_seed(0))
with open(D.rstrip("/") + ".tokens.jsonl", "w") as f:
    for row in ids.tolist():
        f.write(json.dumps({"input_ids": row}) + "\n")
print(json.dumps(res, indent=1))
