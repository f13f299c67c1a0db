"""The table of scripts/bench-cpu.sh: medians over its rounds, ratios within a round.

    python3 scripts/bench_cpu_table.py WORKDIR ROUNDS MIX...

Reads WORKDIR/roundR/{ort,ort8}-MIX.json, trident-MIX-{f32,bf16,int8}.json, base-MIX-f32.json
and WORKDIR/torch-MIX.json. Throughput columns are medians over the rounds; each ratio is the
median of the ratios of runs in the same round (a slow phase of a shared machine slows both
sides of those alike), with their range when there is more than one round.
"""

import json
import statistics
import sys


def load(path):
    try:
        return json.load(open(path))
    except (OSError, ValueError):
        return None


def main():
    work, rounds, mixes = sys.argv[1], int(sys.argv[2]), sys.argv[3:]

    def rates(name):
        """tokens/s of `name` per round (None where that round did not produce it)."""
        runs = [load(f"{work}/round{r}/{name}.json") for r in range(1, rounds + 1)]
        return [d.get("tokens_per_s") if d else None for d in runs]

    def med(name):
        v = [x for x in rates(name) if x]
        return statistics.median(v) if v else None

    def ratio(a, b):
        v = sorted(x / y for x, y in zip(rates(a), rates(b)) if x and y)
        if not v:
            return "—"
        spread = f" ({v[0]:.2f}–{v[-1]:.2f})" if len(v) > 1 else ""
        return f"{statistics.median(v):.2f}{spread}"

    def num(v):
        return f"{v:,.0f}" if v else "—"

    cpuinfo = open("/proc/cpuinfo").read().splitlines()
    cpu = next((l.split(":", 1)[1].strip() for l in cpuinfo if l.startswith("model name")), "?")
    flags = set(next((l.split(":", 1)[1].split() for l in cpuinfo if l.startswith("flags")), []))
    feats = [
        f
        for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")
        if f in flags
    ]

    def first(mix, p):
        return load(f"{work}/round1/trident-{mix}-{p}.json")

    def backend(p):
        d = first(mixes[0], p)
        return d["backend"] if d else "not run"

    print(
        f"CPU: {cpu} ({', '.join(feats)}); {rounds} round(s), medians; "
        f"trident f32: {backend('f32')}; bf16: {backend('bf16')}; int8: {backend('int8')}\n"
    )
    print(
        "| corpus | tokens | FlagEmbedding tok/s | ONNX Runtime f32 | ONNX Runtime int8 "
        "| trident f32 | × ORT f32 | baseline f32 | × baseline | trident bf16 | × ORT int8 "
        "| trident int8 | × ORT int8 | × FE (bf16) | peak RSS f32 / bf16 / int8 MiB |"
    )
    print("|---" * 15 + "|")
    for m in mixes:
        runs = [first(m, p) for p in ("f32", "bf16", "int8")]
        tf, tb, tq = (med(f"trident-{m}-{p}") for p in ("f32", "bf16", "int8"))
        fe = (load(f"{work}/torch-{m}.json") or {}).get("tokens_per_s")
        rss = " / ".join(str(d["peak_rss_bytes"] >> 20) if d else "—" for d in runs)
        tokens = runs[0]["tokens"] if runs[0] else "—"
        cells = [
            m,
            tokens,
            num(fe),
            num(med(f"ort-{m}")),
            num(med(f"ort8-{m}")),
            num(tf),
            ratio(f"trident-{m}-f32", f"ort-{m}"),
            num(med(f"base-{m}-f32")),
            ratio(f"trident-{m}-f32", f"base-{m}-f32"),
            num(tb),
            ratio(f"trident-{m}-bf16", f"ort8-{m}"),
            num(tq),
            ratio(f"trident-{m}-int8", f"ort8-{m}"),
            f"{tb / fe:.2f}" if tb and fe else "—",
            rss,
        ]
        print("| " + " | ".join(str(c) for c in cells) + " |")


if __name__ == "__main__":
    main()
