#!/usr/bin/env python3
"""Cost of trident's output encodings: bytes per document and ranking fidelity against f32.

    python3 scripts/encoding-fidelity.py --trident target/debug/trident --model DIR [--out DIR]

Embeds a built-in multilingual set (40 queries, 200 passages; each query has two relevant passages
and three that share its words but not its meaning) once per encoding (f32; dense f16, bf16; ColBERT
f16, binary) in JSON and in msgpack, then reports
  * mean bytes per passage of the dense vector, the ColBERT rows and the whole record, per format,
    plus the analytic payload for real BGE-M3 (1024 dims, a 512-row document);
  * fidelity against f32, every (query, passage) pair scored: dense cosine (min, mean); Spearman
    rank correlation per query (mean, min) and top-10 overlap (mean) of the dense, ColBERT MaxSim
    and hybrid (0.4 dense + 0.2 sparse + 0.4 ColBERT) scores; R-precision of the hybrid against the labels.
    Binary ColBERT is scored as Vespa does (both sides binarised: +-1 dot / dim = 1 - 2 Hamming / dim)
    and, for comparison, asymmetrically (f32 query rows . +-1 passage rows / sqrt(dim));
  * checks that trident wrote exactly the encodings it names: f16 = np.float16(f32), bf16 = f32
    rounded to nearest even, binary = np.packbits(f32 > 0); the components left in f32 bit-identical
    to the reference; JSON and msgpack carrying the same values.
Prints Markdown; writes results.json (and the raw outputs) to --out. Needs numpy and msgpack.
"""
import argparse, json, os, subprocess, sys, tempfile, time
import msgpack
import numpy as np

# "?" starts a query, "+" is a passage relevant to it, "-" a passage that is not (but shares words).
DATA = """
? When was the Eiffel Tower completed?
+ The Eiffel Tower in Paris was completed in 1889 for the World's Fair.
+ La tour Eiffel a été achevée en 1889 pour l'Exposition universelle.
- The Tokyo Tower was completed in 1958 and is painted orange and white.
- Gustave Eiffel's company also built the iron frame inside the Statue of Liberty.
- Der Berliner Fernsehturm wurde 1969 fertiggestellt.
? What is the boiling point of water at sea level?
+ At sea level, pure water boils at 100 degrees Celsius.
+ Auf Meereshöhe siedet Wasser bei 100 Grad Celsius.
- Water freezes at 0 degrees Celsius and is densest at about 4 degrees.
- The sea level has risen by about 20 centimetres since 1900.
- Pasta should be cooked in plenty of salted water.
? Wer hat die Relativitätstheorie entwickelt?
+ Albert Einstein published the special theory of relativity in 1905.
+ Albert Einstein entwickelte 1915 die allgemeine Relativitätstheorie.
- Isaac Newton formulated the laws of motion and universal gravitation.
- Die Theorie der Evolution durch natürliche Selektion stammt von Charles Darwin.
- Einstein received the Nobel Prize for explaining the photoelectric effect.
? How many bones are in the adult human body?
+ An adult human skeleton has 206 bones.
+ El esqueleto humano adulto tiene 206 huesos.
- The femur is the longest bone in the human body.
- The adult human body contains about five litres of blood.
- Sharks have skeletons made of cartilage rather than bone.
? Quelle est la capitale de l'Australie ?
+ Canberra is the capital city of Australia.
+ La capitale de l'Australie est Canberra, et non Sydney.
- Sydney is the largest city in Australia and home to a famous opera house.
- La capitale du Canada est Ottawa.
- Australia is the only country that is also a continent.
? Which planet is the largest in the solar system?
+ Jupiter is the largest planet in our solar system.
+ 木星是太阳系中最大的行星。
- Mercury is the smallest planet and the closest to the Sun.
- The Sun contains more than 99 percent of the mass of the solar system.
- Saturn has the most spectacular ring system of any planet.
? ¿Cuál es el río más largo de Sudamérica?
+ The Amazon is the longest river in South America.
+ El Amazonas es el río más largo de América del Sur.
- The Nile flows north through Egypt into the Mediterranean Sea.
- El río Paraná forma parte de la frontera entre Argentina y Paraguay.
- The Atacama Desert in South America is one of the driest places on Earth.
? What does DNA stand for?
+ DNA stands for deoxyribonucleic acid.
+ DNA ist die Abkürzung für Desoxyribonukleinsäure.
- RNA carries genetic information from DNA to the ribosomes.
- NASA stands for National Aeronautics and Space Administration.
- The double helix structure was described by Watson and Crick in 1953.
? 长城有多长？
+ The Great Wall of China, with all its branches, is about 21,000 kilometres long.
+ 中国长城全长约两万一千公里。
- The Great Barrier Reef stretches about 2,300 kilometres along the coast of Australia.
- 北京是中国的首都。
- Hadrian's Wall was built by the Romans across northern England.
? Who painted the Mona Lisa?
+ Leonardo da Vinci painted the Mona Lisa in the early sixteenth century.
+ La Joconde a été peinte par Léonard de Vinci.
- The Mona Lisa hangs in the Louvre museum in Paris.
- Vincent van Gogh painted The Starry Night in 1889.
- Michelangelo painted the ceiling of the Sistine Chapel.
? How fast does light travel?
+ Light travels through a vacuum at about 300,000 kilometres per second.
+ La velocidad de la luz en el vacío es de unos 300.000 kilómetros por segundo.
- Sound travels through air at about 343 metres per second.
- A light year is a unit of distance, not of time.
- The cheetah, the fastest land animal, can run at about 110 kilometres per hour.
? Wann fiel die Berliner Mauer?
+ The Berlin Wall fell on 9 November 1989.
+ Die Berliner Mauer fiel am 9. November 1989.
- The Berlin Wall was built in 1961 to stop emigration to the West.
- Germany was reunified on 3 October 1990.
- Berlin ist die Hauptstadt Deutschlands und hat etwa 3,7 Millionen Einwohner.
? What gas do plants absorb for photosynthesis?
+ During photosynthesis, plants take in carbon dioxide and release oxygen.
+ Les plantes absorbent du dioxyde de carbone pour la photosynthèse.
- Humans breathe in oxygen and breathe out carbon dioxide.
- Nitrogen makes up about 78 percent of the Earth's atmosphere.
- Chlorophyll gives plants their green colour.
? 日本で一番高い山は何ですか？
+ Mount Fuji, at 3,776 metres, is the highest mountain in Japan.
+ 富士山は日本で最も高い山で、標高は3776メートルです。
- Mount Everest is the highest mountain on Earth at 8,849 metres.
- 東京は日本の首都です。
- Japan has more than one hundred active volcanoes.
? Who wrote Don Quixote?
+ Don Quixote was written by Miguel de Cervantes.
+ Miguel de Cervantes escribió Don Quijote de la Mancha, publicado en 1605.
- William Shakespeare wrote Hamlet around 1600.
- La Mancha is a dry plateau region in central Spain.
- Cervantes lost the use of his left hand at the Battle of Lepanto.
? How does a vaccine protect against disease?
+ A vaccine trains the immune system to recognise a pathogen so it can fight off a later infection.
+ Impfstoffe bringen dem Immunsystem bei, einen Erreger zu erkennen, bevor eine echte Infektion auftritt.
- Antibiotics kill bacteria but have no effect on viruses.
- Edward Jenner tested the first smallpox vaccine in 1796.
- Washing hands with soap removes many germs from the skin.
? ¿En qué año llegó el ser humano a la Luna?
+ Apollo 11 landed the first humans on the Moon in July 1969.
+ Neil Armstrong pisó la Luna el 20 de julio de 1969.
- The Moon orbits the Earth about once every 27 days.
- Yuri Gagarin became the first human in space in 1961.
- Eine Mondfinsternis tritt auf, wenn die Erde zwischen Sonne und Mond steht.
? What is the chemical symbol for gold?
+ The chemical symbol for gold is Au, from the Latin aurum.
+ 金的化学符号是Au。
- The chemical symbol for silver is Ag.
- Olympic gold medals are mostly made of silver.
- Sodium has the symbol Na, from the Latin natrium.
? Combien de joueurs compte une équipe de football sur le terrain ?
+ A football team has eleven players on the pitch, including the goalkeeper.
+ Une équipe de football aligne onze joueurs sur le terrain.
- A basketball team has five players on the court.
- La Coupe du monde de football a lieu tous les quatre ans.
- A rugby union team fields fifteen players.
? Que língua se fala no Brasil?
+ Portuguese is the official and most widely spoken language of Brazil.
+ No Brasil fala-se português.
- Spanish is spoken in most other countries of South America.
- Brasília became the capital of Brazil in 1960.
- Portugal is a country on the Iberian Peninsula.
? Why is the sky blue?
+ The sky looks blue because air molecules scatter the short blue wavelengths of sunlight more than red ones.
+ Der Himmel ist blau, weil kurzwelliges blaues Licht in der Atmosphäre stärker gestreut wird.
- The ocean covers about 71 percent of the Earth's surface.
- Blue whales are the largest animals that have ever lived.
- A rainbow forms when sunlight is refracted inside raindrops.
? 谁发明了电话？
+ Alexander Graham Bell was granted the first patent for the telephone in 1876.
+ 贝尔于1876年获得了电话的专利。
- Thomas Edison developed a practical electric light bulb in 1879.
- The first mobile phone call was made in 1973.
- 电视是在二十世纪初发明的。
? How many continents are there?
+ Most geography textbooks list seven continents.
+ Il y a sept continents : l'Afrique, l'Antarctique, l'Asie, l'Australie, l'Europe et les deux Amériques.
- Africa is the second largest continent by area.
- There are five oceans: the Pacific, Atlantic, Indian, Southern and Arctic.
- Antarctica is the coldest place on Earth.
? Was ist die Hauptstadt von Spanien?
+ Madrid is the capital and largest city of Spain.
+ Madrid ist die Hauptstadt Spaniens.
- Barcelona is the capital of Catalonia.
- Die Hauptstadt von Portugal ist Lissabon.
- Spain joined the European Union in 1986.
? What is the freezing point of water in Fahrenheit?
+ Water freezes at 32 degrees Fahrenheit.
+ El agua se congela a 32 grados Fahrenheit, que equivalen a 0 grados Celsius.
- Normal body temperature is about 37 degrees Celsius, or 98.6 degrees Fahrenheit.
- Daniel Fahrenheit invented the mercury thermometer in 1714.
- Salt water freezes at a lower temperature than fresh water.
? Who was the first woman to win a Nobel Prize?
+ Marie Curie was the first woman to win a Nobel Prize, in physics in 1903.
+ Marie Curie fut la première femme lauréate d'un prix Nobel.
- Alfred Nobel invented dynamite and founded the Nobel Prizes.
- Malala Yousafzai is the youngest Nobel Prize laureate.
- Rosalind Franklin's X-ray images helped reveal the structure of DNA.
? Какая самая большая страна в мире?
+ Russia is the largest country in the world by area.
+ Россия — самая большая страна в мире по площади.
- China and India are the most populous countries in the world.
- Vatican City is the smallest country in the world.
- Москва — столица России.
? How do bees make honey?
+ Bees make honey by collecting flower nectar and evaporating its water in the hive.
+ Die Bienen sammeln Nektar und verwandeln ihn im Bienenstock in Honig.
- Bees pollinate many of the crops that humans eat.
- Maple syrup is made by boiling the sap of maple trees.
- Honey never spoils if it is stored in a sealed jar.
? Chi ha scritto la Divina Commedia?
+ The Divine Comedy was written by Dante Alighieri in the fourteenth century.
+ La Divina Commedia è stata scritta da Dante Alighieri.
- Giovanni Boccaccio wrote the Decameron.
- Florence is the capital of the Italian region of Tuscany.
- In the medieval sense, a comedy was a story with a happy ending.
? What causes the tides?
+ Tides are caused mainly by the gravitational pull of the Moon on the oceans.
+ Las mareas se deben principalmente a la atracción gravitatoria de la Luna.
- Ocean currents such as the Gulf Stream carry warm water northwards.
- Tsunamis are usually caused by undersea earthquakes.
- Gravity on the Moon is about one sixth of that on Earth.
? Which programming language did Guido van Rossum create?
+ Guido van Rossum created the Python programming language, first released in 1991.
+ Python ist eine Programmiersprache, die von Guido van Rossum entwickelt wurde.
- The python is a large non-venomous snake found in Africa and Asia.
- Java was developed at Sun Microsystems by James Gosling.
- Linus Torvalds released the first version of the Linux kernel in 1991.
? Combien de temps la Terre met-elle pour faire le tour du Soleil ?
+ The Earth takes about 365.25 days to orbit the Sun.
+ La Terre fait le tour du Soleil en environ 365 jours et six heures.
- The Earth rotates once on its axis every 24 hours.
- Le Tour de France est une course cycliste qui dure trois semaines.
- Light from the Sun takes about eight minutes to reach the Earth.
? What is the largest ocean?
+ The Pacific Ocean is the largest and deepest ocean on Earth.
+ 太平洋是地球上最大的海洋。
- The Atlantic Ocean separates Europe and Africa from the Americas.
- The Caspian Sea is the largest lake in the world.
- The Dead Sea is so salty that people float in it easily.
? ¿Quién pintó el Guernica?
+ Pablo Picasso painted Guernica in 1937.
+ El Guernica es un cuadro de Pablo Picasso sobre el bombardeo de la villa vasca.
- Salvador Dalí painted The Persistence of Memory with its melting clocks.
- Guernica is a town in the Basque Country of northern Spain.
- Francisco de Goya painted The Third of May 1808.
? What is the hardest natural material?
+ Diamond is the hardest naturally occurring material.
+ Der Diamant ist das härteste natürliche Material.
- Graphite and diamond are both made of pure carbon.
- Steel is an alloy of iron and carbon.
- Talc is the softest mineral on the Mohs scale.
? How many strings does a standard guitar have?
+ A standard guitar has six strings.
+ Una guitarra clásica tiene seis cuerdas.
- A violin has four strings and is played with a bow.
- A standard piano has 88 keys.
- String theory proposes that particles are tiny vibrating strings.
? Wie viele Einwohner hat Tokio?
+ The Tokyo metropolitan area has about 37 million inhabitants, more than any other city region.
+ Der Großraum Tokio hat rund 37 Millionen Einwohner.
- Tokyo hosted the Summer Olympics in 1964 and in 2021.
- Osaka is the second-largest metropolitan area in Japan.
- Kyoto was the capital of Japan for more than a thousand years.
? What do pandas eat?
+ Giant pandas eat almost nothing but bamboo.
+ 大熊猫几乎只吃竹子。
- Koalas feed on eucalyptus leaves.
- Bamboo is one of the fastest-growing plants in the world.
- The red panda is not closely related to the giant panda.
? Qui a inventé l'imprimerie à caractères mobiles en Europe ?
+ Johannes Gutenberg introduced printing with movable type in Europe around 1450.
+ Gutenberg a inventé l'imprimerie à caractères mobiles vers 1450 à Mayence.
- Paper was invented in China during the Han dynasty.
- 3D printers build objects layer by layer.
- Martin Luther translated the Bible into German.
? How long is a marathon?
+ A marathon is 42.195 kilometres long.
+ Un maratón tiene una distancia de 42,195 kilómetros.
- The world record for the 100 metres sprint is 9.58 seconds.
- The first modern Olympic Games were held in Athens in 1896.
- Marathon is also the name of a town in Greece.
"""

# run name -> (dense encoding, ColBERT encoding); both always passed, so TRIDENT_*_ENCODING cannot leak in
RUNS = {"f32": ("f32", "f32"), "dense-f16": ("f16", "f32"), "dense-bf16": ("bf16", "f32"),
        "colbert-f16": ("f32", "f16"), "colbert-binary": ("f32", "binary")}


def corpus():
    queries, passages, relevant = [], [], []
    for line in DATA.strip().splitlines():
        tag, text = line[0], line[2:]
        if tag == "?":
            queries.append(text)
            relevant.append(set())
        else:
            if tag == "+":
                relevant[-1].add(len(passages))
            passages.append(text)
    return queries, passages, relevant


# ---- the encodings, in numpy (what trident must write) ----
def f16(x):
    return x.astype(np.float16).astype(np.float32)


def bf16(x):
    u = np.ascontiguousarray(x, np.float32).view(np.uint32).astype(np.uint64)
    u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16 << 16).astype(np.uint32)   # round to nearest even
    return u.view(np.float32)


def signs(bits, dim):
    return np.unpackbits(bits, axis=-1)[:, :dim].astype(np.float32) * 2 - 1


ENCODE = {"f32": lambda x: x, "f16": f16, "bf16": bf16, "binary": lambda x: np.packbits(x > 0, axis=-1)}


# ---- readers: {id: {"dense", "colbert", "sparse", "enc", "bytes": {dense, colbert, record}}} ----
def json_span(line, key):
    """Bytes of the top-level value of `key` as written (the one that is an array)."""
    dec, at = json.JSONDecoder(), 0
    while (at := line.find(f'"{key}":', at)) >= 0:
        at += len(key) + 3
        while line[at] == " ":
            at += 1
        if line[at] == "[":
            return dec.raw_decode(line, at)[1] - at
    return 0


def read_json(path):
    out = {}
    for raw in open(path, "rb"):
        line = raw.decode()
        d = json.loads(line)
        enc = {"dense": "f32", "colbert": "f32", **d.get("encoding", {})}
        cb = d["colbert"]
        cb = (np.array([list(bytes.fromhex(h)) for h in cb], np.uint8).reshape(len(cb), -1)
              if enc["colbert"] == "binary" else np.array(cb, np.float64).reshape(len(cb), -1))
        out[d["id"]] = {"dense": np.array(d["dense"], np.float64), "colbert": cb, "enc": enc,
                        "sparse": {int(k): v for k, v in d["sparse"].items()},
                        "bytes": {"dense": json_span(line, "dense"), "colbert": json_span(line, "colbert"),
                                  "record": len(raw)}}
    return out


def tensor(t):
    if t["dtype"] == "bfloat16":
        a = (np.frombuffer(t["data"], "<u2").astype("<u4") << 16).view("<f4")
    else:
        a = np.frombuffer(t["data"], np.dtype(t["dtype"]).newbyteorder("<"))
    return a.reshape(t["shape"])


def read_msgpack(path, repack_exact):
    buf, out = open(path, "rb").read(), {}
    up, at = msgpack.Unpacker(raw=False), 0
    up.feed(buf)
    for d in up:
        end = up.tell()
        repack_exact.append(msgpack.packb(d) == buf[at:end])   # so the component sizes below are exact
        sp = d["sparse"]
        out[d["id"]] = {"dense": tensor(d["dense"]).astype(np.float32), "enc": d["encoding"],
                        "dtype": {"dense": d["dense"]["dtype"], "colbert": d["colbert"]["dtype"],
                                  "dim": d["colbert"].get("dim")},
                        "colbert": tensor(d["colbert"]) if d["colbert"]["dtype"] == "uint8"   # packed bits
                        else tensor(d["colbert"]).astype(np.float32),   # score in f32, not in f16
                        "sparse": dict(zip(tensor(sp["indices"]).tolist(), tensor(sp["values"]).tolist())),
                        "bytes": {"dense": len(msgpack.packb(d["dense"])),
                                  "colbert": len(msgpack.packb(d["colbert"])), "record": end - at}}
        at = end
    return out


# ---- scores and rank statistics ----
def avg_ranks(x):
    r = np.empty(len(x))
    r[np.argsort(x, kind="mergesort")] = np.arange(len(x))
    _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    return (np.bincount(inv, weights=r) / cnt)[inv]


def spearman(a, b):
    ra, rb = avg_ranks(a), avg_ranks(b)
    return float(np.corrcoef(ra, rb)[0, 1])


def top10(a, b):
    return len(set(np.argsort(-a, kind="stable")[:10]) & set(np.argsort(-b, kind="stable")[:10])) / 10


def maxsim(q, p):
    return float((q @ p.T).max(axis=1).mean())


def score_matrices(qs, ps, colbert="float", ref_qs=None):
    """dense, sparse, ColBERT and hybrid scores, [query, passage]. colbert: "float" (MaxSim of the
    stored rows), "sym" (+-1 rows both sides, / dim) or "asym" (f32 rows of ref_qs . +-1 rows / sqrt(dim))."""
    if colbert == "float":
        qc, pc = [q["colbert"] for q in qs], [p["colbert"] for p in ps]
    else:
        dim = ref_qs[0]["colbert"].shape[1]
        pc = [signs(p["colbert"], dim) for p in ps]
        qc = ([signs(q["colbert"], dim) / dim for q in qs] if colbert == "sym"
              else [q["colbert"] / np.sqrt(dim) for q in ref_qs])
    d, s, c = (np.zeros((len(qs), len(ps))) for _ in range(3))
    for i, q in enumerate(qs):
        for j, p in enumerate(ps):
            d[i, j] = q["dense"] @ p["dense"]
            s[i, j] = sum(w * p["sparse"][t] for t, w in q["sparse"].items() if t in p["sparse"])
            c[i, j] = maxsim(qc[i], pc[j])
    return {"dense": d, "colbert": c, "hybrid": 0.4 * d + 0.2 * s + 0.4 * c}


def fidelity(ref, enc, relevant):
    out = {}
    for k in ("dense", "colbert", "hybrid"):
        rho = [spearman(a, b) for a, b in zip(ref[k], enc[k])]
        out[k] = {"spearman_mean": float(np.mean(rho)), "spearman_min": float(np.min(rho)),
                  "top10_mean": float(np.mean([top10(a, b) for a, b in zip(ref[k], enc[k])]))}
    # R-precision against the labels: the share of a query's relevant passages among its top |relevant|
    out["hybrid_rprec"] = float(np.mean([len(set(np.argsort(-row, kind="stable")[:len(rel)]) & rel) / len(rel)
                                         for row, rel in zip(enc["hybrid"], relevant)]))
    return out


# ---- checks: what trident wrote against the encodings applied to the f32 reference ----
DTYPE = {"f32": "float32", "f16": "float16", "bf16": "bfloat16", "binary": "uint8"}


def check(name, recs, ref, fmt, inexact):
    """Mismatches of `recs` (one run) against the encodings applied to the f32 reference. JSON numbers
    may be any text that names the encoded value; those that are not its exact decimal are counted
    in `inexact` (information, not an error)."""
    bad = []
    for i, r in recs.items():
        f = ref[i]
        for part in ("dense", "colbert"):
            e = r["enc"][part]
            want, got = ENCODE[e](f[part].astype(np.float32)), r[part]
            if got.shape != want.shape:
                ok = False
            elif e == "binary":
                ok = np.array_equal(got, want) and (fmt == "json" or r["dtype"]["dim"] == f[part].shape[1])
            else:
                g32 = ENCODE[e](got.astype(np.float32)) if fmt == "json" else got.astype(np.float32)
                ok = np.array_equal(g32.view(np.uint32), want.view(np.uint32))
                if fmt == "json" and e != "f32":
                    inexact[e] = inexact.get(e, 0) + int(np.sum(got != want.astype(np.float64)))
            if fmt == "msgpack" and r["dtype"][part] != DTYPE[e]:
                ok = False
            if not ok:
                bad.append(f"{name}/{fmt} {i} {part} ({e})")
        if r["enc"] != {"dense": RUNS[name][0], "colbert": RUNS[name][1]}:
            bad.append(f"{name}/{fmt} {i} encoding field {r['enc']}")
        if r["sparse"].keys() != f["sparse"].keys() or any(np.float32(r["sparse"][t]) != np.float32(w) for t, w in f["sparse"].items()):
            bad.append(f"{name}/{fmt} {i} sparse")
    return bad


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--trident", default="target/debug/trident")
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=None, help="directory for results.json and the raw outputs")
    a = ap.parse_args()
    out = a.out or tempfile.mkdtemp(prefix="encoding-fidelity-")
    os.makedirs(out, exist_ok=True)
    queries, passages, relevant = corpus()
    qids, pids = [f"q{i:02d}" for i in range(len(queries))], [f"p{j:03d}" for j in range(len(passages))]
    inp = os.path.join(out, "input.jsonl")
    with open(inp, "w", encoding="utf-8") as f:
        for i, t in zip(qids + pids, queries + passages):
            f.write(json.dumps({"id": i, "text": t}, ensure_ascii=False) + "\n")

    t0, recs, secs, repack = time.time(), {}, {}, []
    for name, flags in RUNS.items():
        for fmt in ("msgpack", "json"):
            path = os.path.join(out, f"{name}.{fmt}")
            t = time.time()
            p = subprocess.run([a.trident, "embed", "--model", a.model, "--input", inp, "--output", path, "--format", fmt,
                                "--dense-encoding", flags[0], "--colbert-encoding", flags[1]], capture_output=True, text=True)
            if p.returncode:
                sys.exit(f"trident embed failed for {name}/{fmt}:\n{p.stderr}")
            secs[f"{name}.{fmt}"] = round(time.time() - t, 2)
            recs[name, fmt] = read_msgpack(path, repack) if fmt == "msgpack" else read_json(path)
    ref = recs["f32", "msgpack"]
    inexact = {}
    problems = [p for (name, fmt), r in recs.items() for p in check(name, r, ref, fmt, inexact)]

    sizes = {}
    for (name, fmt), r in recs.items():
        b = [r[p]["bytes"] for p in pids]
        sizes.setdefault(name, {})[fmt] = {k: float(np.mean([x[k] for x in b])) for k in ("dense", "colbert", "record")}
    rows = float(np.mean([len(ref[p]["colbert"]) for p in pids]))
    dim, cdim = len(ref[pids[0]]["dense"]), ref[pids[0]]["colbert"].shape[1]

    qs = lambda r: [r[q] for q in qids]
    ps = lambda r: [r[p] for p in pids]
    base = score_matrices(qs(ref), ps(ref))
    fid = {}
    for name in RUNS:
        r = recs[name, "msgpack"]
        for m in (["sym", "asym"] if name == "colbert-binary" else ["float"]):
            key = name + ("" if m == "float" else f" ({m})")
            fid[key] = fidelity(base, score_matrices(qs(r), ps(r), m, qs(ref)), relevant)
            cos = [float(x @ y / np.linalg.norm(x) / np.linalg.norm(y))
                   for x, y in ((r[i]["dense"].astype(np.float64), ref[i]["dense"].astype(np.float64)) for i in qids + pids)]
            fid[key]["dense_1mcos_max"], fid[key]["dense_1mcos_mean"] = 1 - min(cos), 1 - float(np.mean(cos))

    # analytic payload of real BGE-M3: 1024 dims, a 512-row ColBERT document; JSON scaled by measured bytes/value
    real = {}
    for name in RUNS:
        de, ce = RUNS[name]
        js = sizes[name]["json"]
        real[name] = {"dense_raw": 1024 * {"f32": 4, "f16": 2, "bf16": 2}[de],
                      "colbert_raw_512": 512 * (1024 // 8 if ce == "binary" else 1024 * (4 if ce == "f32" else 2)),
                      "dense_json_est": js["dense"] / dim * 1024,
                      "colbert_json_est_512": js["colbert"] / (rows * cdim) * 512 * 1024}

    kib = lambda n: f"{n / 1024:.1f} KiB" if n < 1 << 20 else f"{n / (1 << 20):.2f} MiB"
    print(f"{len(queries)} queries x {len(passages)} passages; dense {dim} dims, ColBERT {cdim} dims, "
          f"{rows:.1f} rows per passage on average; {time.time() - t0:.0f} s\n")
    print("| encoding | JSON dense | JSON ColBERT | JSON record | msgpack dense | msgpack ColBERT | msgpack record "
          "| BGE-M3 dense raw | BGE-M3 ColBERT raw, 512 rows | BGE-M3 JSON est. (dense / ColBERT 512 rows) |")
    print("|---" * 10 + "|")
    for name in RUNS:
        j, m, r = sizes[name]["json"], sizes[name]["msgpack"], real[name]
        print(f"| {name} | {j['dense']:.0f} | {j['colbert']:.0f} | {j['record']:.0f} | {m['dense']:.0f} | {m['colbert']:.0f} "
              f"| {m['record']:.0f} | {kib(r['dense_raw'])} | {kib(r['colbert_raw_512'])} "
              f"| {kib(r['dense_json_est'])} / {kib(r['colbert_json_est_512'])} |")
    print("\nBytes: mean per passage. Fidelity: against f32, per query over all passages (Spearman mean/min, top-10 overlap).\n")
    print("| encoding | dense 1-cos max / mean | dense rho mean / min | dense top-10 | ColBERT rho mean / min | ColBERT top-10 "
          "| hybrid rho mean / min | hybrid top-10 | hybrid R-prec |")
    print("|---" * 9 + "|")
    print(f"| f32 labels | | | | | | | | {fidelity(base, base, relevant)['hybrid_rprec']:.3f} |")
    for k, f in fid.items():
        d, c, h = f["dense"], f["colbert"], f["hybrid"]
        print(f"| {k} | {f['dense_1mcos_max']:.1e} / {f['dense_1mcos_mean']:.1e} | {d['spearman_mean']:.5f} / {d['spearman_min']:.5f} "
              f"| {d['top10_mean']:.3f} | {c['spearman_mean']:.5f} / {c['spearman_min']:.5f} | {c['top10_mean']:.3f} "
              f"| {h['spearman_mean']:.5f} / {h['spearman_min']:.5f} | {h['top10_mean']:.3f} | {f['hybrid_rprec']:.3f} |")
    print(f"\nChecks: msgpack re-packs byte-exactly: {all(repack)}; encoding mismatches: {len(problems)}; "
          f"JSON numbers not the exact decimal of the encoded value: {inexact}")
    for p in problems[:20]:
        print("  MISMATCH", p)
    res = {"queries": len(queries), "passages": len(passages), "dense_dim": dim, "colbert_dim": cdim,
           "colbert_rows_mean": rows, "bytes_per_passage": sizes, "bge_m3_analytic": real, "fidelity": fid,
           "f32_hybrid_rprec": fidelity(base, base, relevant)["hybrid_rprec"], "mismatches": problems,
           "msgpack_repack_exact": all(repack), "json_inexact_numbers": inexact, "embed_seconds": secs, "seconds": round(time.time() - t0, 1)}
    json.dump(res, open(os.path.join(out, "results.json"), "w"), indent=1)
    print(f"wrote {os.path.join(out, 'results.json')}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
