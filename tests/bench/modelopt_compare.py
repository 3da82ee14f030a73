"""Real modelopt on the benchmark checkpoint, next to calibd (run on the GPU machine).

Runs nvidia-modelopt the way examples/hf_ptq/hf_ptq.py does with --recipe: the model loaded in
bf16 on the GPU, the PTQ recipe loaded with modelopt.recipe.load_recipe, mtq.quantize(model,
recipe.quantize.model_dump(), forward_loop) over the same token file calibd used (batches of
--batch sequences, no padding: every sequence has the same length), then export_hf_checkpoint.
Times load / calibrate / export, prints them next to `calibd bench quantize`'s end-to-end seconds
(its --json file) with the ratio, and compares the two outputs tensor by tensor: names, dtypes,
shapes, identical bytes; for tensors that differ, how many bytes (for packed NVFP4 weights: how
many 4-bit codes) and the largest relative difference of float scales.  Also compares
hf_quant_config.json (without its producer).  A benchmark: it prints numbers and judges none (exit 0 unless it could not
run).

usage: modelopt_compare.py --model D --tokens T --calibd-out DIR --calibd-json FILE --out DIR
         [--recipe general/ptq/nvfp4_experts_only-kv_fp8] [--batch 16] [--json FILE]
"""
import argparse, json, os, sys, time

import torch


def load_tensors(d):
    """name -> (dtype, shape, raw bytes as a uint8 tensor) of a (maybe sharded) output."""
    from safetensors import safe_open
    idx = os.path.join(d, "model.safetensors.index.json")
    if os.path.exists(idx):
        files = sorted(set(json.load(open(idx))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    out = {}
    for f in files:
        with safe_open(os.path.join(d, f), framework="pt") as h:
            for k in h.keys():
                t = h.get_tensor(k)
                out[k] = (str(t.dtype).replace("torch.", ""), tuple(t.shape),
                          t.contiguous().view(-1).view(torch.uint8) if t.numel() else t.view(torch.uint8))
    return out, files


def compare(a_dir, b_dir):
    a, fa = load_tensors(a_dir)
    b, fb = load_tensors(b_dir)
    r = {"files_calibd": fa, "files_modelopt": fb, "tensors_calibd": len(a), "tensors_modelopt": len(b)}
    r["only_calibd"] = sorted(set(a) - set(b))[:20]
    r["only_modelopt"] = sorted(set(b) - set(a))[:20]
    r["n_only_calibd"] = len(set(a) - set(b))
    r["n_only_modelopt"] = len(set(b) - set(a))
    same = meta = 0
    diff = {}
    for k in sorted(set(a) & set(b)):
        da, sa, xa = a[k]
        db, sb, xb = b[k]
        if da != db or sa != sb:
            meta += 1
            if meta <= 10:
                diff[k] = {"calibd": [da, sa], "modelopt": [db, sb]}
            continue
        if torch.equal(xa, xb):
            same += 1
            continue
        kind = k.rsplit(".", 1)[-1]
        d = diff.setdefault(kind, {"tensors": 0, "bytes": 0, "of_bytes": 0, "examples": []})
        d["tensors"] += 1
        nd = int((xa != xb).sum())
        d["bytes"] += nd
        d["of_bytes"] += xa.numel()
        if da == "uint8" and kind == "weight":  # packed NVFP4: count 4-bit codes
            lo = ((xa & 15) != (xb & 15)).sum() + ((xa >> 4) != (xb >> 4)).sum()
            d["codes"] = d.get("codes", 0) + int(lo)
            d["of_codes"] = d.get("of_codes", 0) + 2 * xa.numel()
        if da in ("float32", "bfloat16", "float8_e4m3fn"):
            ta = xa.view(getattr(torch, da)).float()
            tb = xb.view(getattr(torch, da)).float()
            rel = ((ta - tb).abs() / tb.abs().clamp_min(1e-30)).max().item()
            d["max_rel"] = max(d.get("max_rel", 0.0), rel)
        if len(d["examples"]) < 3:
            d["examples"].append(k)
    r["identical"] = same
    r["dtype_or_shape_differs"] = meta
    r["differs"] = diff
    try:
        ha = json.load(open(os.path.join(a_dir, "hf_quant_config.json")))
        hb = json.load(open(os.path.join(b_dir, "hf_quant_config.json")))
        ha.pop("producer", None)  # {"name": "calibd"} vs {"name": "modelopt"}
        hb.pop("producer", None)
        r["hf_quant_config_equal"] = ha == hb
        if ha != hb:
            r["hf_quant_config"] = {"calibd": ha, "modelopt": hb}
    except OSError as e:
        r["hf_quant_config_equal"] = str(e)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--tokens", required=True)
    ap.add_argument("--calibd-out", required=True)
    ap.add_argument("--calibd-json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--recipe", default="general/ptq/nvfp4_experts_only-kv_fp8")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--json")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--no-layerwise-checkpoints", action="store_true",
                    help="drop the recipe's layerwise checkpoint_dir (per-layer resume files)")
    ap.add_argument("--skip-export", action="store_true")
    ap.add_argument("--no-compare", action="store_true",
                    help="export (and time it) but do not compare with calibd's output")
    a = ap.parse_args()
    sync = torch.cuda.synchronize if a.device.startswith("cuda") else (lambda: None)
    import modelopt
    import modelopt.torch.quantization as mtq
    from modelopt.recipe import load_recipe
    from modelopt.torch.export import export_hf_checkpoint
    from transformers import AutoModelForCausalLM
    res = {"modelopt": modelopt.__version__, "recipe": a.recipe, "batch": a.batch}
    ids = [json.loads(l)["input_ids"] for l in open(a.tokens)]
    res["samples"] = len(ids)
    res["tokens"] = sum(len(x) for x in ids)
    sync()
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.bfloat16, device_map=a.device)
    model.eval()
    sync()
    res["load_s"] = time.time() - t0
    recipe = load_recipe(a.recipe)
    cfg = recipe.quantize.model_dump()
    alg = cfg.get("algorithm")
    if a.no_layerwise_checkpoints and isinstance(alg, dict) and isinstance(alg.get("layerwise"), dict):
        alg["layerwise"]["checkpoint_dir"] = None

    def forward_loop(m):
        with torch.no_grad():
            for i in range(0, len(ids), a.batch):
                x = torch.tensor(ids[i:i + a.batch], device=a.device)
                m(input_ids=x, attention_mask=torch.ones_like(x))

    t0 = time.time()
    mtq.quantize(model, cfg, forward_loop)
    sync()
    res["calibrate_s"] = time.time() - t0
    print(f"modelopt load {res['load_s']:.1f} s, calibrate {res['calibrate_s']:.1f} s; "
          f"{'no export' if a.skip_export else 'exporting'}", flush=True)
    t0 = time.time()
    if not a.skip_export:
        with torch.no_grad():
            export_hf_checkpoint(model, export_dir=a.out)
    sync()
    res["export_s"] = time.time() - t0
    res["total_s"] = res["load_s"] + res["calibrate_s"] + res["export_s"]
    res["peak_gpu_GB"] = torch.cuda.max_memory_allocated() / 1e9 if a.device != "cpu" else 0.0
    del model
    print(f"modelopt {res['modelopt']} ({a.recipe}, batch {a.batch}, {res['samples']} x "
          f"{res['tokens'] // max(1, res['samples'])} tokens): load {res['load_s']:.1f} s + "
          f"calibrate {res['calibrate_s']:.1f} s + export {res['export_s']:.1f} s = "
          f"{res['total_s']:.1f} s, peak GPU {res['peak_gpu_GB']:.1f} GB", flush=True)
    if a.calibd_json and os.path.exists(a.calibd_json):
        cj = json.load(open(a.calibd_json))
        res["calibd_wall_s"] = cj["wall_s"]
        res["speedup"] = res["total_s"] / cj["wall_s"]
        floor = (f" (floor {cj['floor_s']:.2f} s, {cj['ratio_to_floor']:.2f} x)"
                 if "floor_s" in cj else "")
        print(f"calibd end to end {cj['wall_s']:.2f} s{floor} vs modelopt {res['total_s']:.1f} s: "
              f"calibd is {res['speedup']:.1f} x faster", flush=True)
    if a.skip_export or a.no_compare:
        if a.json:
            json.dump(res, open(a.json, "w"), indent=1, default=str)
        return 0
    t0 = time.time()
    cmp = compare(a.calibd_out, a.out)
    res["compare"] = cmp
    res["compare_s"] = time.time() - t0
    print(f"tensors: calibd {cmp['tensors_calibd']} in {len(cmp['files_calibd'])} file(s), "
          f"modelopt {cmp['tensors_modelopt']} in {len(cmp['files_modelopt'])} file(s); "
          f"only in calibd {cmp['n_only_calibd']}, only in modelopt {cmp['n_only_modelopt']}; "
          f"byte-identical {cmp['identical']}; dtype/shape differ {cmp['dtype_or_shape_differs']}")
    for k, v in cmp["differs"].items():
        print(f"  differ: {k}: {json.dumps(v)}")
    if cmp["only_calibd"] or cmp["only_modelopt"]:
        print(f"  only calibd (first): {cmp['only_calibd'][:5]}\n  only modelopt (first): "
              f"{cmp['only_modelopt'][:5]}")
    print(f"hf_quant_config.json equal: {cmp['hf_quant_config_equal']}")
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1, default=str)


if __name__ == "__main__":
    sys.exit(main())
