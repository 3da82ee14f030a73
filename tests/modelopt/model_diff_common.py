"""Pieces the whole-model differential scripts (gptq_model_diff.py,
awq_model_diff.py, sq_model_diff.py, modelopt_fingerprints.py) share
beyond gptq_model_diff's loaders.
"""
import contextlib


def count_codes(res, tot, codes, ref_codes):
    """Counts the codes of calibd's export of one linear that differ from
    modelopt's (ref_codes, same shape): res, the linear's row, gets
    codes_differing and codes; tot adds them to its diff and codes."""
    k = int((codes != ref_codes).sum())
    n = int(codes.numel())
    res["codes_differing"] = k
    res["codes"] = n
    tot["diff"] += k
    tot["codes"] += n


@contextlib.contextmanager
def gpt_oss_export(model):
    """modelopt 0.47's export of an AWQ format raises NotImplementedError for
    GptOssForCausalLM in its MoE resmoothing step (get_experts_list), which
    for GPT-OSS's fused BMM experts (no per-expert linears, no
    pre_quant_scale) has nothing to do: skipped while this runs, for
    GPT-OSS only (docs/awq.md "GPT-OSS")."""
    from modelopt.torch.export import unified_export_hf as ueh
    saved = ueh.get_experts_list
    if type(model).__name__ == "GptOssForCausalLM":
        ueh.get_experts_list = lambda module, model_type: []
    try:
        yield
    finally:
        ueh.get_experts_list = saved
