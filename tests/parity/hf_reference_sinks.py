#!/usr/bin/env python3
"""Runs the parity reference script (hf_reference.py) for models whose attention has sinks (gpt_oss).

  python3 hf_reference_sinks.py HF_REFERENCE_PY MODEL_DIR TOKENS OUT_DIR

hf_reference.py records K/V at the attention interface and then calls transformers' SDPA
attention, which ignores the `s_aux` sinks that GptOssAttention passes, and it registers no
mask function, so sliding layers would see the full causal context.  This wrapper, before
running it: routes modules that have `sinks` to transformers' own gpt_oss eager attention
(the one transformers uses for gpt_oss, which has no SDPA support) and gives the reference
implementation transformers' eager (explicit, sliding-window aware) masks.
"""
import runpy
import sys

import transformers.integrations.sdpa_attention as sdpa
from transformers.masking_utils import AttentionMaskInterface, eager_mask
from transformers.models.gpt_oss import modeling_gpt_oss

_sdpa = sdpa.sdpa_attention_forward


def _forward(module, query, key, value, attention_mask, *args, **kwargs):
    if getattr(module, "sinks", None) is not None:
        return modeling_gpt_oss.eager_attention_forward(module, query, key, value, attention_mask,
                                                        *args, **kwargs)
    return _sdpa(module, query, key, value, attention_mask, *args, **kwargs)


sdpa.sdpa_attention_forward = _forward
AttentionMaskInterface.register("calib_reference", eager_mask)
script = sys.argv[1]
sys.argv = [script] + sys.argv[2:]
runpy.run_path(script, run_name="__main__")
