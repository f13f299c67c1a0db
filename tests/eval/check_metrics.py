#!/usr/bin/env python3
"""trident's metric values against pytrec_eval's (trec_eval), query by query.

    check_metrics.py CASE.json

CASE.json: {"qrels": {qid: {doc: grade}}, "runs": {qid: {doc: score}},
            "ours": {qid: {"ndcg@10": v, "recall@20": v, "mrr@10": v, ...}}}
MRR@k is trec_eval's recip_rank when the first relevant document is within the top k, else 0.
Exit 0 and a JSON summary line when every value agrees within 1e-6; 1 on a mismatch; 3 when
pytrec_eval is missing (`bash scripts/test.sh` installs pytrec-eval-terrier).
"""
import json
import sys

try:
    import pytrec_eval
except ImportError as e:  # pragma: no cover
    print(f"missing Python package: {e}", file=sys.stderr)
    sys.exit(3)


def main():
    case = json.load(open(sys.argv[1]))
    qrels, runs, ours = case["qrels"], case["runs"], case["ours"]
    keys = sorted({k for v in ours.values() for k in v})
    measures = set()
    for k in keys:
        name, cut = k.split("@")
        measures.add({"ndcg": f"ndcg_cut.{cut}", "recall": f"recall.{cut}", "mrr": "recip_rank"}[name])
    theirs = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(runs)
    if set(theirs) != set(ours):
        print(f"evaluated queries differ: pytrec_eval {sorted(theirs)}, trident {sorted(ours)}")
        sys.exit(1)
    bad, checked = [], 0
    for q, vals in ours.items():
        for k, v in vals.items():
            name, cut = k.split("@")
            if name == "mrr":
                rr = theirs[q]["recip_rank"]
                ref = rr if rr * int(cut) >= 1 - 1e-12 else 0.0
            else:
                ref = theirs[q][f"{'ndcg_cut' if name == 'ndcg' else 'recall'}_{cut}"]
            checked += 1
            if abs(ref - v) > 1e-6:
                bad.append((q, k, v, ref))
    if bad:
        for b in bad[:20]:
            print("query %s %s: trident %.9f, pytrec_eval %.9f" % b)
        sys.exit(1)
    print(json.dumps({"queries": len(ours), "values": checked, "pytrec_eval": pytrec_eval.__name__}))


if __name__ == "__main__":
    main()
