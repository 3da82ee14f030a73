"""Pieces the whole-model differential scripts (gptq_model_diff.py,
awq_model_diff.py, sq_model_diff.py) share beyond gptq_model_diff's
loaders.
"""


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
