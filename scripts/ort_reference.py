#!/usr/bin/env python3
"""ONNX Runtime baseline for `trident bench`: the same BGE-M3 checkpoint exported to ONNX with
the three heads in the graph, run by ONNX Runtime (float32) on length-bucketed batches of at most
--bucket-tokens padded tokens. Prints one JSON line like torch_reference.py (real tokens/s).

    python3 scripts/ort_reference.py --model DIR --corpus FILE.jsonl --threads 2 [--int8]
        [--dump OUT.jsonl]

--int8 runs ONNX Runtime's dynamic int8 quantisation of the same graph (per-channel int8
weights, int8 activations quantised per call), as its documentation recommends for
transformers on CPU. --dump writes every document's outputs in trident's JSON Lines form (id,
dense, sparse {token: weight} max-pooled over the ids outside <s> </s> <pad> <unk>, ColBERT
rows after <s>) for scripts/precision-fidelity.py.

Needs: torch, transformers, onnx, onnxruntime (pip). The export is cached next to --work.
"""
import argparse
import json
import os
import statistics
import time

import numpy as np
import torch


class M3(torch.nn.Module):
    """XLM-R encoder + BGE-M3 heads: normalised CLS, ReLU sparse weights, normalised ColBERT."""

    def __init__(self, model_dir):
        super().__init__()
        from transformers import AutoModel

        self.enc = AutoModel.from_pretrained(model_dir, attn_implementation="eager")
        h = self.enc.config.hidden_size
        self.colbert = torch.nn.Linear(h, torch.load(os.path.join(model_dir, "colbert_linear.pt"))["weight"].shape[0])
        self.colbert.load_state_dict(torch.load(os.path.join(model_dir, "colbert_linear.pt")))
        self.sparse = torch.nn.Linear(h, 1)
        self.sparse.load_state_dict(torch.load(os.path.join(model_dir, "sparse_linear.pt")))

    def forward(self, input_ids, attention_mask):
        h = self.enc(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        dense = torch.nn.functional.normalize(h[:, 0], dim=-1)
        sparse = torch.relu(self.sparse(h)).squeeze(-1) * attention_mask
        col = self.colbert(h[:, 1:]) * attention_mask[:, 1:, None]
        col = torch.nn.functional.normalize(col, dim=-1)
        return dense, sparse, col


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--bucket-tokens", type=int, default=4096)
    ap.add_argument("--max-length", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--work", default="/tmp/trident-ort")
    ap.add_argument("--int8", action="store_true")
    ap.add_argument("--dump")
    a = ap.parse_args()

    import onnxruntime as ort
    from transformers import AutoTokenizer

    os.makedirs(a.work, exist_ok=True)
    onnx_path = os.path.join(a.work, os.path.basename(os.path.normpath(a.model)) + ".onnx")
    if not os.path.exists(onnx_path):
        m = M3(a.model).eval()
        ids = torch.ones(2, 16, dtype=torch.long)
        torch.onnx.export(m, (ids, torch.ones_like(ids)), onnx_path, opset_version=17,
                          input_names=["input_ids", "attention_mask"],
                          output_names=["dense", "sparse", "colbert"],
                          dynamic_axes={"input_ids": {0: "b", 1: "s"}, "attention_mask": {0: "b", 1: "s"},
                                        "dense": {0: "b"}, "sparse": {0: "b", 1: "s"},
                                        "colbert": {0: "b", 1: "s1"}}, dynamo=False)
    if a.int8:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q_path = onnx_path[: -len(".onnx")] + "-int8.onnx"
        if not os.path.exists(q_path):
            quantize_dynamic(onnx_path, q_path, weight_type=QuantType.QInt8, per_channel=True)
        onnx_path = q_path
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = a.threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_path, opts, providers=["CPUExecutionProvider"])

    tok = AutoTokenizer.from_pretrained(a.model)
    docs = [json.loads(l) for l in open(a.corpus, encoding="utf-8") if l.strip()]
    texts = [d["text"] for d in docs]
    skip = {tok.cls_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id}
    dumped = {}

    def run(dump=False):
        enc = tok(texts, truncation=True, max_length=a.max_length)["input_ids"]
        order = sorted(range(len(enc)), key=lambda i: -len(enc[i]))
        batches, cur = [], []
        for i in order:  # longest first: the first document of a batch sets its padded width
            if cur and len(enc[cur[0]]) * (len(cur) + 1) > a.bucket_tokens:
                batches.append(cur)
                cur = []
            cur.append(i)
        batches.append(cur)
        for b in batches:
            width = len(enc[b[0]])
            ids = np.ones((len(b), width), dtype=np.int64)  # <pad> = 1
            mask = np.zeros((len(b), width), dtype=np.int64)
            for r, i in enumerate(b):
                ids[r, : len(enc[i])] = enc[i]
                mask[r, : len(enc[i])] = 1
            dense, sparse, col = sess.run(None, {"input_ids": ids, "attention_mask": mask})
            if dump:
                for r, i in enumerate(b):
                    n = len(enc[i])
                    lex = {}
                    for t, w in zip(enc[i], sparse[r, :n].tolist()):
                        if t not in skip and w > 0 and w > lex.get(str(t), 0.0):
                            lex[str(t)] = w
                    dumped[i] = {"id": docs[i].get("id", i), "dense": dense[r].tolist(),
                                 "sparse": lex, "colbert": col[r, : n - 1].tolist()}
        return sum(len(x) for x in enc)

    tokens = run(dump=bool(a.dump))  # warm-up
    if a.dump:
        with open(a.dump, "w", encoding="utf-8") as f:
            for i in sorted(dumped):
                f.write(json.dumps(dumped[i]) + "\n")
    times = []
    for _ in range(a.repeat):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    s = statistics.median(times)
    print(json.dumps({"impl": "onnxruntime-" + ort.__version__ + (" int8" if a.int8 else " f32"), "threads": a.threads,
                      "docs": len(texts), "tokens": tokens, "seconds": s, "all_seconds": times,
                      "tokens_per_s": tokens / s, "bucket_tokens": a.bucket_tokens}))


if __name__ == "__main__":
    main()
