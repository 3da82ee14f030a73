#!/usr/bin/env python3
"""Runs real NVIDIA modelopt on the tiny fixtures and writes fingerprints.

The flow is hf_ptq.py's --recipe flow (docs/modelopt_diff.md): load the
checkpoint with the transformers class named in config.json, load the
recipe, mtq.quantize() with a calibration forward loop over token ids,
detect the checkpoint's MTP tensors as hf_ptq does (prefixes for
exclude_modules, orphans re-attached through extra_state_dict), then
export_hf_checkpoint().  Everything runs on the CPU, so modelopt divides
exactly (calibd's --div exact).

For every (case, recipe) of cases.txt the fingerprint file
OUT/<case>/<recipe basename>.json holds: the versions used, the
hf_quant_config.json modelopt wrote, and per output tensor its dtype, shape
and the SHA-256 of its raw bytes, plus the values of the small float scale
tensors (weight_scale_2, input_scale, k_scale, v_scale, per-tensor FP8
weight_scale).

    python modelopt_fingerprints.py --fixture-bin BUILD/tests/fixtures/calibd-fixture \
        --parity-dir tests/parity --out tests/modelopt/fingerprints [--only a,b] \
        [--keep DIR]

Needs torch, transformers, safetensors and nvidia-modelopt (CPU is enough).
"""
import argparse
import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

RECIPES_ALL = [
    "general/ptq/nvfp4_experts_only-kv_fp8",
    "general/ptq/nvfp4_default-kv_fp8",
    "general/ptq/fp8_default-kv_fp8",
]

# Scale tensors whose values are stored besides the hash (float32, small).
VALUE_SUFFIXES = (".weight_scale_2", ".input_scale", ".k_scale", ".v_scale", ".weight_scale",
                  "_weight_scale_2", "_input_scale", "_weight_scale")  # "_": gpt_oss BMM experts
MAX_VALUES = 64
MAX_PQS_VALUES = 4096

# hf_ptq.py's --qformat names calibd takes (engine/recipe/qformat.c) and the
# preset of modelopt_recipes/configs/ptq/presets/model/ each runs; hf_ptq
# renamed its choices to the preset basenames, the old names are what
# calibd (and the issue) use.  A recipe item "qformat:NAME" of cases.txt is
# hf_ptq's flow without --recipe: that preset, then the KV cache preset of
# its default --kv_cache_qformat fp8_cast appended
# (update_quant_cfg_with_kv_cache_quant).
QFORMAT_PRESETS = {
    "fp8_pc_pt": "fp8_per_channel_per_token",
    "fp8_pb_wo": "fp8_2d_blockwise_weight_only",
    "nvfp4_mse": "nvfp4_w4a4_weight_mse_fp8_sweep",
    "w4a8_nvfp4_fp8": "w4a8_nvfp4_fp8",
    "w4a8_mxfp4_fp8": "w4a8_mxfp4_fp8",
}
KV_CACHE_QFORMAT = "fp8_cast"


def item_base(item):
    """Fingerprint file basename of a cases.txt recipe item."""
    if item.startswith("test:"):
        return "test_" + item[5:]
    if item.startswith("qformat:"):
        return "qformat_" + item.split(":", 1)[1].replace(":", "_kv_")
    return os.path.basename(item)


def quant_config(item):
    """The quantization config hf_ptq.py builds for a recipe item
    ("qformat:NAME[:KV]", KV an hf_ptq --kv_cache_qformat, default
    fp8_cast)."""
    if item.startswith("qformat:"):
        import modelopt.torch.quantization as mtq
        from modelopt.recipe.presets import KV_QUANT_CFG_CHOICES, QUANT_CFG_CHOICES
        name, _, kv = item.split(":", 1)[1].partition(":")
        cfg = QUANT_CFG_CHOICES[QFORMAT_PRESETS.get(name, name)]
        return mtq.update_quant_cfg_with_kv_cache_quant(
            cfg, KV_QUANT_CFG_CHOICES[kv or KV_CACHE_QFORMAT]["quant_cfg"])
    from modelopt.recipe import load_recipe
    return load_recipe(recipe_file(item)).quantize.model_dump()


def read_cases(path):
    rows = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            case, arch, layout, recipes = line.split()
            rows.append((case, arch, layout,
                         RECIPES_ALL if recipes == "all" else recipes.split(",")))
    return rows


def st_tensors(path):
    """(name, dtype, shape, raw bytes) of every tensor of one safetensors file,
    read from the header directly (no torch)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            a, b = info["data_offsets"]
            f.seek(base + a)
            yield name, info["dtype"], info["shape"], f.read(b - a)


def fingerprint_dir(out_dir):
    tensors = {}
    for fn in sorted(os.listdir(out_dir)):
        if not fn.endswith(".safetensors"):
            continue
        for name, dtype, shape, raw in st_tensors(os.path.join(out_dir, fn)):
            e = {"dtype": dtype, "shape": shape, "sha256": hashlib.sha256(raw).hexdigest()}
            if (dtype == "F32" and name.endswith(VALUE_SUFFIXES)
                    and len(raw) // 4 <= MAX_VALUES):
                e["values"] = list(struct.unpack("<%df" % (len(raw) // 4), raw))
            elif (dtype == "BF16" and name.endswith((".pre_quant_scale", ".k_bias", ".v_bias"))
                  and len(raw) // 2 <= MAX_PQS_VALUES):
                # SmoothQuant: from the activations, compared with a tolerance;
                # affine KV biases: for the report (compared by hash)
                e["values"] = [struct.unpack("<f", b"\0\0" + raw[i:i + 2])[0]
                               for i in range(0, len(raw), 2)]
            tensors[name] = e
    with open(os.path.join(out_dir, "hf_quant_config.json")) as f:
        hqc = json.load(f)
    return {"hf_quant_config": hqc, "tensors": dict(sorted(tensors.items()))}


def write_fingerprint(fp, f):
    """JSON with one line per tensor (small, readable diffs)."""
    tensors = fp["tensors"]
    head = {k: v for k, v in fp.items() if k != "tensors"}
    f.write(json.dumps(head, indent=1, sort_keys=True)[:-2] + ',\n "tensors": {\n')
    f.write(",\n".join("  %s: %s" % (json.dumps(k), json.dumps(v, separators=(",", ":")))
                       for k, v in tensors.items()))
    f.write("\n }\n}\n")


def checkpoint_names(model_dir):
    names = []
    for fn in sorted(os.listdir(model_dir)):
        if fn.endswith(".safetensors"):
            with open(os.path.join(model_dir, fn), "rb") as f:
                n = struct.unpack("<Q", f.read(8))[0]
                names += [k for k in json.loads(f.read(n)) if k != "__metadata__"]
    return names


def mtp_prefixes(names, config):
    """hf_ptq's MTP detection (docs/modelopt_diff.md): tensors whose name
    contains "mtp", or that lie in the inlined MTP layers
    model.layers.[N, N + num_nextn_predict_layers); prefixes = the first name
    component (unless "model") and the first "layers.<i>" prefix of the
    non-inlined ones, plus the inlined layer prefixes."""
    n_next = int(getattr(config, "num_nextn_predict_layers", 0) or 0)
    inlined = []
    if n_next:
        nh = config.num_hidden_layers
        inlined = ["model.layers.%d" % i for i in range(nh, nh + n_next)]
    dotted = tuple(p + "." for p in inlined)
    keys = [k for k in names if k.startswith(dotted) or "mtp" in k] if dotted else \
        [k for k in names if "mtp" in k]
    if not keys:
        return [], []
    prefixes = set(inlined)
    for k in keys:
        if dotted and k.startswith(dotted):
            continue
        parts = k.split(".")
        if parts[0] != "model":
            prefixes.add(parts[0])
        for i in range(len(parts) - 1):
            if parts[i] == "layers" and parts[i + 1].isdigit():
                prefixes.add(".".join(parts[: i + 2]))
                break
    return sorted(prefixes), keys


def recipe_file(recipe_name):
    """modelopt's built-in recipe, else calibd's own (recipes/NAME.yaml, written
    in modelopt's schema against the configs/ units both trees share: the
    hf_ptq qformat recipes such as general/ptq/int8_default-kv_fp8_cast);
    "test:NAME" is the differential test's own tests/modelopt/recipes/NAME.yaml."""
    from modelopt.recipe.loader import BUILTIN_RECIPES_LIB
    here = os.path.dirname(os.path.abspath(__file__))
    if recipe_name.startswith("test:"):
        return os.path.join(here, "recipes", recipe_name[5:] + ".yaml")
    if any(os.path.exists(os.path.join(str(BUILTIN_RECIPES_LIB), recipe_name + ext))
           for ext in ("", ".yaml", ".yml")):
        return recipe_name
    return os.path.join(here, "..", "..", "recipes", recipe_name + ".yaml")


AWQ_METHODS = ("awq_lite", "awq_full", "awq_clip")


def algo_method(quant_cfg):
    """The method name of a quantization config's algorithm (None: max)."""
    algo = quant_cfg.get("algorithm")
    return algo.get("method") if isinstance(algo, dict) else algo


def one_run(recipe_name):
    """{"calibd_run": "quantize"} for a recipe whose algorithm changes the
    weights during calibration (calibd exports those in one quantize run
    only), else {} (calibrate, then export from the statistics)."""
    method = algo_method(quant_config(recipe_name))
    return {"calibd_run": "quantize"} if method in ("smoothquant", "gptq") + AWQ_METHODS else {}


@contextlib.contextmanager
def awq_on_cpu(torch, model):
    """modelopt's AWQ on the CPU (docs/awq.md "GPT-OSS"): its dynamic NVFP4
    Triton kernel and fp32 sqrt replaced as awq_model_diff.py does
    (gptq_model_diff.patch_modelopt_cpu, patch_ieee_sqrt; restored on exit),
    and the export's MoE resmoothing skipped for fused experts, which it
    fails on (awq_model_diff.fused_experts_export: GPT-OSS's)."""
    from modelopt.torch.quantization.nn.modules import tensor_quantizer as tq
    from awq_model_diff import fused_experts_export
    from gptq_model_diff import patch_ieee_sqrt, patch_modelopt_cpu
    saved = (tq.static_blockwise_fp4_fake_quant, tq.dynamic_block_quant, torch.Tensor.pow,
             torch.Tensor.sqrt)
    patch_modelopt_cpu(torch)
    patch_ieee_sqrt(torch)
    try:
        yield fused_experts_export
    finally:
        (tq.static_blockwise_fp4_fake_quant, tq.dynamic_block_quant, torch.Tensor.pow,
         torch.Tensor.sqrt) = saved


def install_hadamard():
    """modelopt's rotated KV cache (kv_nvfp4_rotate) calls the CUDA package
    fast_hadamard_transform, which has no CPU path.  This stands in for it
    with the same normalized transform in torch (docs/modelopt_diff.md):
    hadamard_transform(x, scale) over the last dimension of x, widened to
    fp32, the Sylvester butterfly (pairs j, j + h for h = 1, 2, 4, ...),
    times fp32 scale, back in x's dtype: calibd's kernels/hadamard.c
    order, so the rounding is the same; the CUDA package's own order can
    differ in the last fp32 bit."""
    import types
    import torch
    if "fast_hadamard_transform" in sys.modules:
        return

    def hadamard_transform(x, scale=1.0):
        n = x.shape[-1]
        v = x.float().reshape(-1, n)
        h = 1
        while h < n:
            v = v.reshape(-1, n // (2 * h), 2, h)
            a, b = v[:, :, 0, :], v[:, :, 1, :]
            v = torch.stack((a + b, a - b), dim=2).reshape(-1, n)
            h *= 2
        v = v * torch.tensor(scale, dtype=torch.float32)
        return v.reshape(x.shape).to(x.dtype)

    mod = types.ModuleType("fast_hadamard_transform")
    mod.hadamard_transform = hadamard_transform
    sys.modules["fast_hadamard_transform"] = mod


def run_modelopt(model_dir, tokens, recipe_name, out_dir):
    import torch
    import transformers
    import modelopt.torch.quantization as mtq

    install_hadamard()
    torch.manual_seed(1234)
    config = transformers.AutoConfig.from_pretrained(model_dir)
    cls = getattr(transformers, config.architectures[0])
    kwargs = {}
    qc = getattr(config, "quantization_config", None)
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    if method == "mxfp4":  # hf_ptq loads MXFP4 checkpoints dequantized
        kwargs["quantization_config"] = transformers.Mxfp4Config(dequantize=True)
    model = cls.from_pretrained(model_dir, dtype="auto", device_map="cpu", **kwargs)
    model.eval()

    quant_cfg = quant_config(recipe_name)
    awq = algo_method(quant_cfg) in AWQ_METHODS

    def forward_loop(m):
        with torch.no_grad():
            if awq:  # one step of every row: calibd's one micro-batch (docs/awq.md)
                m(input_ids=torch.tensor(tokens, dtype=torch.long))
                return
            for row in tokens:
                m(input_ids=torch.tensor([row], dtype=torch.long))

    with awq_on_cpu(torch, model) if awq else contextlib.nullcontext() as fused:
        model = mtq.quantize(model, quant_cfg, forward_loop=forward_loop)
        if fused:
            fused(torch, model)
        export_quantized(model, model_dir, config, out_dir)


def export_quantized(model, model_dir, config, out_dir):
    """export_hf_checkpoint with hf_ptq's MTP handling (docs/export.md "MTP layers")."""
    from safetensors import safe_open
    from modelopt.torch.export import export_hf_checkpoint

    prefixes, keys = mtp_prefixes(checkpoint_names(model_dir), config)
    extra = {}
    if keys:
        state = model.state_dict()
        loaded = {}
        for fn in sorted(os.listdir(model_dir)):
            if fn.endswith(".safetensors"):
                with safe_open(os.path.join(model_dir, fn), framework="pt") as f:
                    for k in f.keys():
                        if k in keys:
                            (loaded if k in state else extra)[k] = f.get_tensor(k)
        if loaded:
            model.load_state_dict(loaded, strict=False)
        model._mtp_layer_prefixes = prefixes
    export_hf_checkpoint(model, export_dir=out_dir, extra_state_dict=extra)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture-bin", required=True)
    ap.add_argument("--parity-dir", default=os.path.join(here, "..", "parity"))
    ap.add_argument("--cases", default=os.path.join(here, "cases.txt"))
    ap.add_argument("--out", default=os.path.join(here, "fingerprints"))
    ap.add_argument("--only", default="")
    ap.add_argument("--only-recipes", default="",
                    help="comma-separated recipe basenames: regenerate only these")
    ap.add_argument("--keep", default="", help="keep modelopt's exports under this folder")
    args = ap.parse_args()

    import modelopt
    import torch
    import transformers

    only = set(filter(None, args.only.split(",")))
    failed = []
    for case, arch, layout, recipes in read_cases(args.cases):
        if only and case not in only:
            continue
        case, _, parity = case.partition(":")  # "case:parity": tokens of another case
        parity = parity or case
        with open(os.path.join(args.parity_dir, parity, "case.json")) as f:
            meta = json.load(f)
        with open(os.path.join(args.parity_dir, parity, "tokens.jsonl")) as f:
            tokens = [json.loads(l)["input_ids"] for l in f if l.strip()]
        with tempfile.TemporaryDirectory() as tmp:
            fx = os.path.join(tmp, "fixture")
            cmd = [args.fixture_bin, "--arch", arch, "--seed", str(meta["seed"])]
            if layout == "wide":  # every linear input a multiple of 128
                cmd += ["--wide"]
            elif layout != "default":
                cmd += ["--layout", layout]
            subprocess.run(cmd + [fx], check=True)
            for r in recipes:
                base = item_base(r)
                if args.only_recipes and base not in args.only_recipes.split(","):
                    continue
                out = os.path.join(args.keep, case, base) if args.keep else \
                    os.path.join(tmp, "out-" + base)
                print("== %s %s" % (case, r), flush=True)
                try:
                    run_modelopt(fx, tokens, r, out)
                except Exception as e:  # report and go on with the others
                    print("FAILED %s %s: %r" % (case, r, e), flush=True)
                    failed.append((case, r, repr(e)))
                    continue
                fp = fingerprint_dir(out)
                fp = {"case": case, "recipe": r, "fixture": {"arch": arch, "layout": layout,
                                                            "seed": meta["seed"]},
                      **one_run(r),
                      "versions": {"modelopt": modelopt.__version__,
                                   "transformers": transformers.__version__,
                                   "torch": torch.__version__},
                      **fp}
                os.makedirs(os.path.join(args.out, case), exist_ok=True)
                with open(os.path.join(args.out, case, base + ".json"), "w") as f:
                    write_fingerprint(fp, f)
    for c, r, e in failed:
        print("modelopt failed: %s %s: %s" % (c, r, e), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
