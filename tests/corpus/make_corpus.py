#!/usr/bin/env python3
"""Write a reproducible multilingual Parquet corpus for crates/trident/tests/corpus.rs and
scripts/bench-corpus.py, and optionally the same rows as JSON Lines.

    make_corpus.py OUT_DIR [--rows 100000] [--files 5] [--row-group 1000] [--seed 7]
                   [--jsonl FILE] [--jsonl-sample N] [--words LO,HI] [--no-nulls] [--distinct]

OUT_DIR gets files of uneven sizes (the last one in a subdirectory, so directory discovery
is recursive), each with row groups of --row-group rows (the last one partial), and a
`_SUCCESS` file the job must ignore. Columns: id (string, unique), text (string in 8
languages; a few null, a few empty, some repeated, most of 1 to 4 words, some long enough to be
truncated at 64 tokens), lang (string) and n (int64, the row's position in the corpus): the
last two are for --keep-columns.

--words LO,HI sets the usual text length; --no-nulls and --distinct (every text unique, no
repeats: nothing for the content cache) make a benchmark corpus.

--jsonl writes {"id", "text"} per row (null texts as null) in corpus order; with
--jsonl-sample N only every row with n % (rows // N) == 0 (a deterministic sample).
Prints one JSON line: rows, files, row_groups, null_texts, jsonl_rows.
Exit code 3 when pyarrow is missing.
"""
import argparse
import json
import os
import random
import sys

try:
    import pyarrow as pa
    import pyarrow.parquet as pq
except ImportError as e:  # the Rust test turns exit code 3 into "run bash scripts/test.sh"
    print(f"pyarrow missing: {e}", file=sys.stderr)
    sys.exit(3)

WORDS = {
    "en": "the river light stone garden winter market engine signal forest quiet number "
    "bridge ocean paper window storm harvest planet music letter mountain silver road".split(),
    "de": "der Fluss Licht Stein Garten Winter Markt Motor Signal Wald ruhig Zahl Brücke "
    "Ozean Papier Fenster Sturm Ernte Planet Musik Brief Berg Silber Straße".split(),
    "fr": "la rivière lumière pierre jardin hiver marché moteur signal forêt calme nombre "
    "pont océan papier fenêtre tempête récolte planète musique lettre montagne".split(),
    "es": "el río luz piedra jardín invierno mercado motor señal bosque tranquilo número "
    "puente océano papel ventana tormenta cosecha planeta música carta montaña".split(),
    "ru": "река свет камень сад зима рынок двигатель сигнал лес тихий число мост океан "
    "бумага окно буря урожай планета музыка письмо гора серебро дорога".split(),
    "zh": "河流 光 石头 花园 冬天 市场 发动机 信号 森林 安静 数字 桥 海洋 纸 窗户 风暴 "
    "收获 行星 音乐 信 山 银 路".split(),
    "ja": "川 光 石 庭 冬 市場 エンジン 信号 森 静か 数 橋 海 紙 窓 嵐 収穫 惑星 音楽 "
    "手紙 山 銀 道".split(),
    "ar": "النهر الضوء الحجر الحديقة الشتاء السوق المحرك الإشارة الغابة هادئ رقم الجسر "
    "المحيط الورق النافذة العاصفة الحصاد الكوكب الموسيقى الرسالة الجبل".split(),
}
LANGS = sorted(WORDS)


def make_rows(rows, seed, length=(1, 4), nulls=True, distinct=False):
    rng = random.Random(seed)
    ids, texts, langs = [], [], []
    for n in range(rows):
        lang = LANGS[rng.randrange(len(LANGS))]
        r = rng.random()
        if n % 997 == 13 and nulls:
            text = None  # a failed row
        elif n % 4999 == 7:
            text = ""  # empty, still embedded
        elif n > 100 and r < 0.03 and not distinct:
            text = texts[rng.randrange(n)]  # a repeated text (content cache, other id)
        else:
            words = WORDS[lang]
            k = rng.randint(30, 80) if r > 0.997 else rng.randint(*length)
            sep = "" if lang in ("zh", "ja") else " "
            text = sep.join(words[rng.randrange(len(words))] for _ in range(k))
            if r > 0.9:
                text += f" {rng.randrange(10**6)}."
            elif r > 0.85:  # code-switching: a word of another language
                other = WORDS[LANGS[rng.randrange(len(LANGS))]]
                text += f", {other[rng.randrange(len(other))]}?"
            if distinct:
                text += f" #{n}"
        ids.append(f"{lang}-{seed}-{n:07d}")
        texts.append(text)
        langs.append(lang)
    return ids, texts, langs


def file_sizes(rows, files, seed):
    """Uneven sizes summing to rows."""
    rng = random.Random(seed + 1)
    w = [rng.uniform(0.6, 1.4) for _ in range(files)]
    sizes = [int(rows * x / sum(w)) for x in w]
    sizes[-1] += rows - sum(sizes)
    return sizes


def file_name(i, files):
    name = f"corpus-{i:02d}.parquet"
    return os.path.join("more", name) if i == files - 1 and files > 1 else name


def write_file(path, table, row_group):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with pq.ParquetWriter(path, table.schema) as w:
        for start in range(0, max(table.num_rows, 1), row_group):
            w.write_table(table.slice(start, row_group), row_group_size=row_group)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--files", type=int, default=5)
    ap.add_argument("--row-group", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--jsonl")
    ap.add_argument("--jsonl-sample", type=int, default=0)
    ap.add_argument("--words", default="1,4", help="words per text: LO,HI")
    ap.add_argument("--no-nulls", action="store_true", help="no null texts")
    ap.add_argument("--distinct", action="store_true", help="every text different")
    a = ap.parse_args()

    words = tuple(int(x) for x in a.words.split(","))
    ids, texts, langs = make_rows(a.rows, a.seed, words, not a.no_nulls, a.distinct)
    schema = pa.schema(
        [("id", pa.string()), ("text", pa.string()), ("lang", pa.string()), ("n", pa.int64())]
    )
    start, groups = 0, 0
    for i, size in enumerate(file_sizes(a.rows, a.files, a.seed)):
        sl = slice(start, start + size)
        t = pa.table(
            [ids[sl], texts[sl], langs[sl], list(range(start, start + size))], schema=schema
        )
        write_file(os.path.join(a.out, file_name(i, a.files)), t, a.row_group)
        groups += -(-size // a.row_group)
        start += size
    open(os.path.join(a.out, "_SUCCESS"), "w").close()
    sampled = 0
    if a.jsonl:
        step = max(1, a.rows // a.jsonl_sample) if a.jsonl_sample else 1
        with open(a.jsonl, "w", encoding="utf-8") as f:
            for n in range(0, a.rows, step):
                f.write(json.dumps({"id": ids[n], "text": texts[n]}, ensure_ascii=False) + "\n")
                sampled += 1
    print(json.dumps({
        "rows": a.rows, "files": a.files, "row_groups": groups,
        "null_texts": sum(t is None for t in texts), "jsonl_rows": sampled,
    }))


if __name__ == "__main__":
    main()
