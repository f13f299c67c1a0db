#!/usr/bin/env python3
"""How far bf16 arithmetic moves BGE-M3 outputs, by where it rounds (CPU emulation, torch).

Runs the XLM-R encoder + BGE-M3 heads with rounding to bf16 switched on at chosen places and
compares each variant with the unrounded model, using the GPU tests' measures
(|a - b| / (1 + |b|) element-wise, lexical keys present on one side only, cosines):

  weights        only the weights rounded (what `--precision bf16` does on the CPU)
  bf16 stream    trident's CUDA bf16 mode before the fp32 residual stream: every activation
                 stored in bf16, the heads read the bf16 final state
  fp32 stream    the CUDA bf16 mode now: GEMM operands (and attention inputs, probabilities for
                 the tensor-core kernel) in bf16, the residual stream, the residual GEMM outputs
                 and the dense/sparse heads in fp32

On the tiny fixture (../shared/fixtures/tiny-m3 or tests/fixtures/tiny-m3) and on a random
real-width model (weights N(0, 0.02^2) like `Checkpoint::random`, 4 layers, the GPU test's
document lengths). Usage: scripts/bf16-error-budget.py [--fixture DIR] [--seeds 0,1,2]
"""
import argparse
import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file

VARIANTS = {
    "weights": dict(w=1),
    "bf16 stream": dict(w=1, act=1, stream=1, op=1, heads_in=1),
    "fp32 stream": dict(w=1, act=1, y32=1, op=1, head_w32=1),
}


def bf(x):
    return x.to(torch.bfloat16).to(x.dtype)


def same(x):
    return x


def layer_norm(x, p, eps=1e-5):
    m = x.mean(-1, keepdim=True)
    v = ((x - m) ** 2).mean(-1, keepdim=True)
    return (x - m) / torch.sqrt(v + eps) * p[0] + p[1]


def encode(m, ids, r, tc_attention):
    """m: model dict; r: rounding switches. Returns dense, {token: weight}, colbert rows."""
    on = lambda k: bf if r.get(k) else same  # noqa: E731
    W, ACT, STREAM, OP = on("w"), on("act"), on("stream"), on("op")
    Y = same if r.get("y32") else ACT
    P = bf if r and tc_attention else same  # mma.sync P·V takes bf16 probabilities
    n, H, nh = len(ids), m["H"], m["heads"]
    ids_t = torch.tensor(ids)
    pos = torch.arange(n) + 2  # XLM-R positions start after the padding index
    x = W(m["word"])[ids_t] + W(m["pos"])[pos] + W(m["type"])[0]
    x = STREAM(layer_norm(x, m["emb_ln"]))
    for L in m["layers"]:
        qkv = ACT(ACT(OP(x) @ W(L["wqkv"]).T) + L["bqkv"])
        d = H // nh
        q, k, v = (t.reshape(n, nh, d).transpose(0, 1) for t in qkv.split(H, dim=1))
        p = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(d), -1)
        o = ACT((P(p) @ v).transpose(0, 1).reshape(n, H))
        x = STREAM(layer_norm(Y(OP(o) @ W(L["wo"]).T) + L["bo"] + x, L["ln1"]))
        f = ACT(torch.nn.functional.gelu(ACT(OP(x) @ W(L["wi"]).T) + L["bi"]))
        x = STREAM(layer_norm(Y(OP(f) @ W(L["wf"]).T) + L["bf"] + x, L["ln2"]))
    h = bf(x) if r.get("heads_in") else x
    dense = h[0] / h[0].norm()
    ws = m["ws"] if r.get("head_w32") else W(m["ws"])
    tw = torch.relu(h @ ws.T + m["bs"])[:, 0]
    lex = {}
    for t, w in zip(ids, tw.tolist()):
        if t not in m["special"] and w > 0:
            lex[t] = max(lex.get(t, 0.0), w)
    c = (OP(h[1:]) @ W(m["wc"]).T) + m["bc"]
    return dense, lex, c / c.norm(dim=-1, keepdim=True)


def worst(a, b):
    return float(((a - b).abs() / (1 + b.abs())).max()) if a.numel() else 0.0


def cos(a, b):
    return float((a * b).sum(-1).div(a.norm(dim=-1) * b.norm(dim=-1)).min()) if a.numel() else 1.0


def compare(m, docs, tc_attention):
    ref = [encode(m, d, {}, tc_attention) for d in docs]
    rows = []
    for name, r in VARIANTS.items():
        s = dict(dense=0.0, colbert=0.0, lexical=0.0, cos_d=1.0, cos_c=1.0, k3=0, k2=0)
        for d, (rd, rl, rc) in zip(docs, ref):
            gd, gl, gc = encode(m, d, r, tc_attention)
            s["dense"] = max(s["dense"], worst(gd, rd))
            s["colbert"] = max(s["colbert"], worst(gc, rc))
            s["cos_d"] = min(s["cos_d"], cos(gd, rd))
            s["cos_c"] = min(s["cos_c"], cos(gc, rc))
            for k, v in rl.items():
                s["lexical"] = max(s["lexical"], abs(gl.get(k, 0.0) - v) / (1 + v))
            for a, b in ((rl, gl), (gl, rl)):
                for k, v in a.items():
                    if k not in b:
                        s["k3"] += v > 1e-3
                        s["k2"] += v > 1e-2
        rows.append((name, s))
    return rows


def print_rows(title, rows):
    print(f"\n{title}")
    print("| variant | dense | ColBERT | lexical | min cos dense / ColBERT | keys one-sided >1e-3 / >1e-2 |")
    print("|---|---|---|---|---|---|")
    for name, s in rows:
        print(f"| {name} | {s['dense']:.2e} | {s['colbert']:.2e} | {s['lexical']:.2e} | "
              f"{s['cos_d']:.6f} / {s['cos_c']:.6f} | {s['k3']} / {s['k2']} |", flush=True)


def fixture_model(d):
    t = {k: v.double() for k, v in load_file(str(d / "model.safetensors")).items()}
    cfg = json.loads((d / "config.json").read_text())
    sp = torch.load(d / "sparse_linear.pt", weights_only=True)
    cb = torch.load(d / "colbert_linear.pt", weights_only=True)
    lin = lambda p: (t[p + ".weight"], t[p + ".bias"])  # noqa: E731
    layers = []
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        q, k, v = (lin(p + "attention.self." + n) for n in ("query", "key", "value"))
        layers.append(dict(
            wqkv=torch.cat([q[0], k[0], v[0]]), bqkv=torch.cat([q[1], k[1], v[1]]),
            wo=t[p + "attention.output.dense.weight"], bo=t[p + "attention.output.dense.bias"],
            ln1=lin(p + "attention.output.LayerNorm"),
            wi=t[p + "intermediate.dense.weight"], bi=t[p + "intermediate.dense.bias"],
            wf=t[p + "output.dense.weight"], bf=t[p + "output.dense.bias"],
            ln2=lin(p + "output.LayerNorm")))
    return dict(H=cfg["hidden_size"], heads=cfg["num_attention_heads"], layers=layers,
                word=t["embeddings.word_embeddings.weight"],
                pos=t["embeddings.position_embeddings.weight"],
                type=t["embeddings.token_type_embeddings.weight"],
                emb_ln=lin("embeddings.LayerNorm"), special={0, 1, 2, 3},
                ws=sp["weight"].double(), bs=sp["bias"].double(),
                wc=cb["weight"].double(), bc=cb["bias"].double())


def random_model(seed, layers=4, H=1024, heads=16, inter=4096, vocab=250002):
    g = torch.Generator().manual_seed(seed)
    w = lambda *s: torch.randn(*s, generator=g) * 0.02  # noqa: E731
    b = lambda n: torch.randn(n, generator=g) * 0.01  # noqa: E731
    ln = lambda: (1 + torch.randn(H, generator=g) * 0.02, b(H))  # noqa: E731
    return dict(H=H, heads=heads, word=w(vocab, H), pos=w(8194, H), type=w(1, H), emb_ln=ln(),
                layers=[dict(wqkv=w(3 * H, H), bqkv=b(3 * H), wo=w(H, H), bo=b(H), ln1=ln(),
                             wi=w(inter, H), bi=b(inter), wf=w(H, inter), bf=b(H), ln2=ln())
                        for _ in range(layers)],
                ws=w(1, H), bs=torch.tensor([0.05]), wc=w(H, H), bc=b(H), special={0, 1, 2, 3})


def random_docs(seed, vocab=250002, lens=(1, 2, 9, 64, 65, 130, 517, 1000)):
    g = torch.Generator().manual_seed(seed)
    docs = []
    for n in lens:
        ids = torch.randint(4, vocab - 1, (n,), generator=g).tolist()
        ids[0] = 0
        if n > 1:
            ids[-1] = 2
        docs.append(ids)
    return docs


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    root = Path(__file__).resolve().parent.parent
    ap.add_argument("--fixture", type=Path, default=root / "tests/fixtures/tiny-m3")
    ap.add_argument("--seeds", default="0,1,2", help="real-shape random models to try")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    exp = json.loads((a.fixture / "expected.json").read_text())
    docs = [it["input_ids"] for it in exp["encode"]["8192"]]
    # Head size 8: the GPU runs the generic attention kernel (fp32 probabilities).
    print_rows(f"tiny fixture ({len(docs)} texts), against float64",
               compare(fixture_model(a.fixture), docs, tc_attention=False))
    for s in (int(x) for x in a.seeds.split(",") if x):
        print_rows(f"random real-width model, 4 layers, seed {s} (8 documents, 1,788 tokens), "
                   "against float32", compare(random_model(s), random_docs(100 + s), True))


if __name__ == "__main__":
    main()
