#!/usr/bin/env python3
"""A PyTorch emulation of trident's int8 linear layers (crates/trident-model/src/cpu/quant.rs,
smooth.rs), for trying quantiser variants in seconds instead of a rebuild: calibrates on the
sentences of calibrate.rs, then runs the checkpoint with every encoder linear layer fake-quantised
(per-channel symmetric int8 weights, per-token u8 activations with a zero point, SmoothQuant
factors, the widest features held out in f32; Q, K and V share one input code as trident's fused
layer does) and writes `trident embed`-style JSON Lines for scripts/precision-fidelity.py.

    python3 scripts/int8-emulate.py --model /tmp/realweights --input in.jsonl --out x.jsonl \
        [--alpha 0.4] [--held 8] [--act-bits 8] [--exact-activations] [--f32]
"""
import argparse
import json
import os
import re
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ort_reference import M3  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def calibration_sentences():
    src = open(os.path.join(ROOT, "crates/trident-model/src/calibrate.rs"), encoding="utf-8").read()
    block = src[src.index("SENTENCES: &[&str] = &["):]
    block = block[: block.index("\n];")]
    out = []
    for s in re.findall(r'"((?:[^"\\]|\\.)*)"', block, re.S):
        s = re.sub(r"\\\n\s*", "", s)
        out.append(s.replace("\\n", "\n").replace('\\"', '"').replace("\\'", "'"))
    return out


def fake_act(x, bits):
    """Per-row asymmetric codes over [min(0, lo), max(0, hi)], as quant::RowQ."""
    levels = 2**bits - 1
    lo, hi = x.amin(-1, keepdim=True).clamp(max=0), x.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / levels
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    zp = torch.round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, levels) - zp) * scale


def fake_weight(w):
    """Per-output-channel symmetric codes, max|w| / 127, as quant::channel_scale."""
    s = w.abs().amax(1, keepdim=True) / 127
    s = torch.where(s > 0, s, torch.ones_like(s))
    return torch.clamp(torch.round(w / s), -127, 127) * s


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--alpha", type=float, default=0.4)
    ap.add_argument("--held", type=int, default=8)
    ap.add_argument("--act-bits", type=int, default=8)
    ap.add_argument("--exact-activations", action="store_true")
    ap.add_argument("--f32", action="store_true", help="no quantisation (checks the emulation)")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from transformers import AutoTokenizer

    m = M3(a.model).eval()
    tok = AutoTokenizer.from_pretrained(a.model)
    groups = {}
    for i, layer in enumerate(m.enc.encoder.layer):
        s = layer.attention.self
        groups[f"{i}.qkv"] = [s.query, s.key, s.value]
        groups[f"{i}.attn_out"] = [layer.attention.output.dense]
        groups[f"{i}.ffn_in"] = [layer.intermediate.dense]
        groups[f"{i}.ffn_out"] = [layer.output.dense]
    act_max, hooks = {}, []
    for name, mods in groups.items():
        def record(_mod, inp, name=name):
            x = inp[0].detach().reshape(-1, inp[0].shape[-1]).abs().amax(0)
            act_max[name] = torch.maximum(act_max[name], x) if name in act_max else x
        hooks.append(mods[0].register_forward_pre_hook(record))
    with torch.no_grad():
        for s in calibration_sentences():
            e = tok(s, return_tensors="pt", truncation=True, max_length=512)
            m(e["input_ids"], e["attention_mask"])
    for h in hooks:
        h.remove()
    if not a.f32:
        for name, mods in groups.items():
            w = torch.cat([md.weight.data for md in mods], 0)
            act, k = act_max[name], w.shape[1]
            w_max = w.abs().amax(0)
            f = act**a.alpha / w_max ** (1 - a.alpha)
            dead = (act <= act.mean() * 1e-2) | (w_max <= 0)
            f = torch.where(dead, torch.ones_like(f), f.clamp(1e-3, 1e3))
            held = torch.zeros(k, dtype=torch.bool)
            held[torch.topk(act / f, min(a.held, k // 32)).indices] = True
            ws = torch.where(held[None, :], torch.zeros_like(w), w * f[None, :])
            wq = torch.where(held[None, :], w * f[None, :], fake_weight(ws))
            off = 0
            for md in mods:
                n = md.weight.shape[0]
                part, off = wq[off: off + n], off + n

                def forward(x, md=md, part=part, f=f, held=held):
                    xs = x / f
                    if not a.exact_activations:
                        rest = fake_act(torch.where(held, torch.zeros_like(xs), xs), a.act_bits)
                        xs = rest + torch.where(held, xs, torch.zeros_like(xs))
                    return xs @ part.T + md.bias
                md.forward = forward
    skip = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    with open(a.input, encoding="utf-8") as fi, open(a.out, "w") as fo, torch.no_grad():
        for line in fi:
            d = json.loads(line)
            ids = tok(d["text"], truncation=True, max_length=8192)["input_ids"]
            t = torch.tensor([ids])
            dense, sparse, col = m(t, torch.ones_like(t))
            lex = {}
            for tid, wt in zip(ids, sparse[0].tolist()):
                if tid not in skip and wt > 0 and wt > lex.get(str(tid), 0.0):
                    lex[str(tid)] = wt
            fo.write(json.dumps({"id": d["id"], "dense": dense[0].tolist(), "sparse": lex,
                                 "colbert": col[0, : len(ids) - 1].tolist()}) + "\n")


if __name__ == "__main__":
    main()
