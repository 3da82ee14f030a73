#!/usr/bin/env python3
"""Regenerates the tokenizer conformance fixtures from Hugging Face `tokenizers`.

Run by hand (never by the tests, which need neither Python nor the network):

    pip install tokenizers            # the reference implementation
    python3 tests/tokenizer/make_reference.py [--shared /work/shared] \
        [--fixture-tokenizer DIR/tokenizer.json]

What it writes (all committed, all small):
  data/tiny_*.model.json   three tiny BPE models trained on the corpus with
                           `tokenizers` trainers: byte-level ("bl"),
                           sentencepiece-like with byte_fallback ("sp"), and
                           word-piece-like with continuing_subword_prefix and
                           end_of_word_suffix ("wp")
  data/variants.json       tokenizer.json bodies (everything but "model")
                           exercising each supported component, each naming
                           the tiny model it uses
  reference/NAME.jsonl     expected ids, one line per corpus sample:
                           {"s": "FILE:LINE", "ids": [...]} plus "special":
                           [...] when add_special_tokens=True gives other ids

Corpus samples (the C test builds the same list): every line of
corpus/*.txt with the escapes \\n \\r \\t \\\\ \\xHH (raw byte) and \\u{HEX}
(a code point) expanded, named FILE:LINE (1-based); and, for the real
checkpoints' tokenizers only, each whole file as it is on disk, FILE:0.
Bytes that are not valid UTF-8 are decoded with errors="replace", which is
what calibd does with invalid input.
"""
import argparse
import json
import os
import re
import sys

from tokenizers import Tokenizer, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus")
DATA = os.path.join(HERE, "data")
REF = os.path.join(HERE, "reference")


def unescape(line: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(line):
        c = line[i:i + 1]
        if c == b"\\" and i + 1 < len(line):
            e = line[i + 1:i + 2]
            if e in (b"n", b"r", b"t", b"\\"):
                out += {b"n": b"\n", b"r": b"\r", b"t": b"\t", b"\\": b"\\"}[e]
                i += 2
                continue
            m = re.match(rb"x([0-9a-fA-F]{2})", line[i + 1:])
            if m:
                out.append(int(m.group(1), 16))
                i += 4
                continue
            m = re.match(rb"u\{([0-9a-fA-F]{1,6})\}", line[i + 1:])
            if m:
                out += chr(int(m.group(1), 16)).encode("utf-8")
                i += 1 + len(m.group(0))
                continue
        out += c
        i += 1
    return bytes(out)


def samples(whole_files: bool):
    res = []
    for name in sorted(os.listdir(CORPUS)):
        if not name.endswith(".txt"):
            continue
        raw = open(os.path.join(CORPUS, name), "rb").read()
        lines = raw.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        for i, line in enumerate(lines):
            res.append((f"{name}:{i + 1}", unescape(line)))
        if whole_files:
            res.append((f"{name}:0", raw))
    return res


def write_ref(tok: Tokenizer, name: str, whole_files: bool):
    n = 0
    with open(os.path.join(REF, name + ".jsonl"), "w") as f:
        for key, b in samples(whole_files):
            text = b.decode("utf-8", errors="replace")
            plain = tok.encode(text, add_special_tokens=False).ids
            special = tok.encode(text, add_special_tokens=True).ids
            rec = {"s": key, "ids": plain}
            if special != plain:
                rec["special"] = special
            f.write(json.dumps(rec, separators=(",", ":")) + "\n")
            n += 1
    print(f"{name}: {n} samples")


def corpus_text():
    return [b.decode("utf-8", errors="replace") for _, b in samples(False)]


def train_models():
    texts = corpus_text() * 3
    out = {}
    # byte-level BPE
    t = Tokenizer(models.BPE())
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    t.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=700, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    out["tiny_bl"] = json.loads(t.to_str())["model"]
    # sentencepiece-like: ▁ words, <unk>, byte-fallback tokens
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    t.pre_tokenizer = pre_tokenizers.Metaspace()
    t.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=900, show_progress=False, limit_alphabet=200,
        special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]))
    m = json.loads(t.to_str())["model"]
    # string-form merges, as older tokenizer.json files have them
    m["merges"] = [" ".join(p) if isinstance(p, list) else p for p in m["merges"]]
    out["tiny_sp"] = m
    # word-piece-like suffix/prefix BPE
    t = Tokenizer(models.BPE(unk_token="[UNK]", continuing_subword_prefix="##",
                             end_of_word_suffix="</w>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, show_progress=False, limit_alphabet=120,
        continuing_subword_prefix="##", end_of_word_suffix="</w>",
        special_tokens=["[UNK]", "[CLS]", "[SEP]"]))
    out["tiny_wp"] = json.loads(t.to_str())["model"]
    return out


def added(id_, content, special=True, **kw):
    d = {"id": id_, "content": content, "single_word": False, "lstrip": False,
         "rstrip": False, "normalized": False, "special": special}
    d.update(kw)
    return d


def split(pattern, behavior, invert=False, regex=True):
    return {"type": "Split", "pattern": {"Regex" if regex else "String": pattern},
            "behavior": behavior, "invert": invert}


BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def variants(mods):
    bl, sp, wp = mods["tiny_bl"], mods["tiny_sp"], mods["tiny_wp"]
    nb, ns, nw = len(bl["vocab"]), len(sp["vocab"]), len(wp["vocab"])
    def tmpl(pre, suf, ids):
        return {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": t, "type_id": 0}} for t in pre] +
                      [{"Sequence": {"id": "A", "type_id": 0}}] +
                      [{"SpecialToken": {"id": t, "type_id": 0}} for t in suf],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {t: {"id": t, "ids": [i], "tokens": [t]} for t, i in ids.items()}}
    bl_ids = {"<s>": nb, "</s>": nb + 1}
    bl_added = [added(nb, "<s>"), added(nb + 1, "</s>"),
                added(nb + 2, "<mask>", lstrip=True, rstrip=True),
                added(nb + 3, "[WORD]", special=False, single_word=True),
                added(nb + 4, "hello world", special=False, normalized=True),
                added(nb + 5, "<|im_start|>"), added(nb + 6, "<|im_end|>")]
    v = []

    def add(name, model, body, override=None):
        body.setdefault("added_tokens", [])
        body.setdefault("normalizer", None)
        body.setdefault("pre_tokenizer", None)
        body.setdefault("post_processor", None)
        body.update({"version": "1.0", "truncation": None, "padding": None,
                     "decoder": None})
        v.append({"name": name, "model": model, "model_override": override or {},
                  "tokenizer": body})

    add("bl_template", "tiny_bl", {
        "added_tokens": bl_added, "normalizer": {"type": "NFKC"},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": tmpl(["<s>"], ["</s>"], bl_ids)})
    add("bl_roberta_lower", "tiny_bl", {
        "added_tokens": bl_added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Lowercase"}, {"type": "Strip", "strip_left": True, "strip_right": True}]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
                          "use_regex": True},
        "post_processor": {"type": "RobertaProcessing", "sep": ["</s>", nb + 1],
                           "cls": ["<s>", nb], "trim_offsets": True, "add_prefix_space": False}})
    add("bl_digits_punct", "tiny_bl", {
        "added_tokens": bl_added[:2],
        "normalizer": {"type": "NFD"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True},
            {"type": "Punctuation", "behavior": "Contiguous"}, BL]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True}, tmpl(["<s>"], [], bl_ids)]}})
    add("bl_digits_ws", "tiny_bl", {
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFKD"},
            {"type": "Replace", "pattern": {"String": "\t"}, "content": "    "},
            {"type": "Replace", "pattern": {"Regex": "[0-9]{4,}"}, "content": "#"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": False},
            {"type": "WhitespaceSplit"},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": False}]}})
    for beh in ["Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"]:
        for inv in (False, True):
            add(f"bl_split_{beh}_{int(inv)}", "tiny_bl", {
                "added_tokens": bl_added[5:],
                "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                    split(r"\s+|[,.;:!?]|\p{N}", beh, inv), BL]}})
    add("bl_split_literal", "tiny_bl", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(", ", "Isolated", regex=False), split("e", "MergedWithNext", regex=False),
            {"type": "Punctuation"}, BL]}})
    add("bl_qwen_regex", "tiny_bl", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
                  "Isolated"), BL]}})
    add("bl_whitespace", "tiny_bl", {
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "Whitespace"}, BL]}})
    sp_added = [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")]
    tmpl_sp = tmpl(["<s>"], [], {"<s>": sp["vocab"]["<s>"]})
    add("sp_metaspace_first", "tiny_sp", {
        "added_tokens": sp_added,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "first", "split": True},
        "post_processor": tmpl_sp})
    add("sp_metaspace_nosplit", "tiny_sp", {
        "added_tokens": sp_added,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": False}})
    add("sp_metaspace_never", "tiny_sp", {
        "added_tokens": sp_added,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "never", "split": True}})
    add("sp_llama_legacy", "tiny_sp", {
        "added_tokens": sp_added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "post_processor": tmpl_sp})
    add("sp_ignore_merges", "tiny_sp", {
        "added_tokens": sp_added,
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True}},
        {"ignore_merges": True})
    add("sp_no_fallback", "tiny_sp", {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True}},
        {"byte_fallback": False})
    add("sp_no_unk", "tiny_sp", {
        "pre_tokenizer": {"type": "Metaspace", "replacement": "\u2581",
                          "prepend_scheme": "always", "split": True}},
        {"byte_fallback": False, "unk_token": None})
    add("wp_bert", "tiny_wp", {
        "added_tokens": [added(0, "[UNK]"), added(1, "[CLS]"), added(2, "[SEP]")],
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFC"}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "Whitespace"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 2], "cls": ["[CLS]", 1]}})
    add("wp_fuse_unk", "tiny_wp", {
        "pre_tokenizer": {"type": "WhitespaceSplit"}}, {"fuse_unk": True})
    return v


def model_for(mods, v):
    m = json.loads(json.dumps(mods[v["model"]]))
    m.update(v["model_override"])
    return m


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=os.path.join(HERE, "..", "..", "..", "shared"))
    ap.add_argument("--fixture-tokenizer", help="tokenizer.json written by calibd-fixture")
    args = ap.parse_args()
    os.makedirs(DATA, exist_ok=True)
    os.makedirs(REF, exist_ok=True)

    for name in ("qwen3", "deepseek_v3"):
        path = os.path.join(args.shared, "fixtures", "tokenizers", name, "tokenizer.json")
        write_ref(Tokenizer.from_file(path), name, True)

    if args.fixture_tokenizer:
        write_ref(Tokenizer.from_file(args.fixture_tokenizer), "fixture", True)

    mods = train_models()
    for k, m in mods.items():
        with open(os.path.join(DATA, k + ".model.json"), "w") as f:
            json.dump(m, f, ensure_ascii=False, separators=(",", ":"))
    vs = variants(mods)
    with open(os.path.join(DATA, "variants.json"), "w") as f:
        json.dump(vs, f, ensure_ascii=False, indent=1)
    for v in vs:
        body = dict(v["tokenizer"])
        body["model"] = model_for(mods, v)
        write_ref(Tokenizer.from_str(json.dumps(body)), v["name"], False)


if __name__ == "__main__":
    sys.exit(main())
