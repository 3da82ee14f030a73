#!/usr/bin/env python3
"""Writes the config.json fixtures of the config-compatibility test
(tests/model/test_config_compat.c, docs/config_compat.md) from its
hand-written inputs:

  hub/<model_type>.json   the 4.x-era spelling of a real hub release of that
                          model type, written by hand from the published
                          config.json (num_experts / rope_scaling /
                          top-level rope_theta / torch_dtype ...) of, in
                          order, Qwen3-30B-A3B, Qwen1.5-MoE-A2.7B,
                          Mixtral-8x7B-v0.1, OLMoE-1B-7B-0924,
                          Qwen3-Next-80B-A3B-Instruct, Qwen3.5-35B-A3B (VLM
                          and its text-only re-export), DeepSeek-V3,
                          gpt-oss-20b, Llama-3.1-8B, Qwen2.5-7B-Instruct,
                          Qwen3-8B

It writes:

  tf5/<model_type>.json   hub/<model_type>.json loaded by transformers and written
                          back with save_pretrained (transformers 5 spelling:
                          num_local_experts, rope_parameters, dtype ...)
  fixtures/<arch>.json    the config.json of every tiny fixture
                          (calibd-fixture --arch <arch>) loaded and saved by
                          transformers the same way

    python make_configs.py BUILD/tests/fixtures/calibd-fixture

Needs transformers 5.x (e.g. /opt/hfenv/bin/python).  Commit the results.
"""
import json
import os
import subprocess
import sys
import tempfile

import transformers
from transformers import AutoConfig

HERE = os.path.dirname(os.path.abspath(__file__))


def resave(config_dict_or_dir, out_path):
    """Loads a config.json with transformers and writes it back."""
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(config_dict_or_dir, dict):
            with open(os.path.join(tmp, "config.json"), "w") as f:
                json.dump(config_dict_or_dir, f, indent=2)
            src = tmp
        else:
            src = config_dict_or_dir
        cfg = AutoConfig.from_pretrained(src)
        dst = os.path.join(tmp, "saved")
        cfg.save_pretrained(dst)
        with open(os.path.join(dst, "config.json")) as f:
            text = f.read()
    os.makedirs(os.path.dirname(out_path), exist_ok=True)
    with open(out_path, "w") as f:
        f.write(text)


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: make_configs.py BUILD/tests/fixtures/calibd-fixture")
    fixture_bin = sys.argv[1]
    print("transformers", transformers.__version__)
    hub = os.path.join(HERE, "hub")
    for name in sorted(os.listdir(hub)):
        if name.endswith(".json"):
            with open(os.path.join(hub, name)) as f:
                resave(json.load(f), os.path.join(HERE, "tf5", name))
    archs = subprocess.run([fixture_bin, "--list"], check=True, capture_output=True,
                           text=True).stdout.split()
    for a in archs:
        with tempfile.TemporaryDirectory() as tmp:
            fx = os.path.join(tmp, "fx")
            subprocess.run([fixture_bin, "--arch", a, fx], check=True)
            resave(fx, os.path.join(HERE, "fixtures", a + ".json"))
    print("written under", HERE)


if __name__ == "__main__":
    main()
