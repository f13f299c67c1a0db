//! The documents and bad records the cluster tests feed a node.

use super::kafka::Rec;

/// A test corpus: good documents (id, text) and bad records (key, raw value, expected reason).
pub struct Corpus {
    pub good: Vec<(String, String)>,
    pub bad: Vec<(String, Vec<u8>, &'static str)>,
    pub records: Vec<Rec>,
}

const WORDS: &[&[&str]] = &[
    &[
        "the",
        "quick",
        "brown",
        "fox",
        "jumps",
        "over",
        "lazy",
        "dog",
        "stream",
        "kafka",
        "embedding",
        "vector",
    ],
    &["le", "chat", "noir", "mange", "une", "pomme", "très", "rapidement", "été", "où", "français"],
    &["der", "schnelle", "braune", "Fuchs", "springt", "über", "den", "faulen", "Hund", "Straße"],
    &["быстрая", "коричневая", "лиса", "прыгает", "через", "ленивую", "собаку", "привет", "мир"],
    &["γρήγορη", "καφέ", "αλεπού", "πηδάει", "πάνω", "από", "σκύλο", "καλημέρα"],
    &["东京", "北京", "你好", "世界", "数据", "模型", "向量", "检索"],
    &["مرحبا", "بالعالم", "الثعلب", "البني", "السريع", "يقفز"],
    &["🙂", "🚀", "data", "🔥", "ok", "naïve", "café", "\t", "e\u{301}"],
];

/// `n` documents of mixed lengths and languages (5 % exact text duplicates, ids distinct),
/// plus `bad_per_kind` bad records of each kind; a few good documents are plain-text values
/// keyed by their id. `max_record_bytes` is the node's limit (for oversize records).
pub fn corpus(
    prefix: &str,
    n: usize,
    bad_per_kind: usize,
    partitions: i32,
    max_record_bytes: usize,
) -> Corpus {
    let mut seed: u64 = 0x9e3779b97f4a7c15;
    let mut rnd = move |m: usize| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % m as u64) as usize
    };
    let mut good: Vec<(String, String)> = Vec::new();
    let mut records = Vec::new();
    for i in 0..n {
        let id = format!("{prefix}-{i}");
        let text = if i % 20 == 19 && !good.is_empty() {
            good[rnd(good.len())].1.clone() // exact duplicate of an earlier text
        } else {
            let lang = WORDS[rnd(WORDS.len())];
            // Mostly short, some long: the tiny model's CPU encoder in a dev build is slow.
            let len = match rnd(20) {
                0 => 100 + rnd(100),
                1..=5 => 20 + rnd(40),
                _ => 1 + rnd(20),
            };
            let t = (0..len).map(|_| lang[rnd(lang.len())]).collect::<Vec<_>>().join(" ");
            // A blank text is a bad record for a node (tests/stream.rs covers it).
            if t.trim().is_empty() {
                format!("{t}ok")
            } else {
                t
            }
        };
        let value = if i % 10 == 3 {
            text.as_bytes().to_vec() // plain text: the key is the id
        } else {
            serde_json::json!({"id": id, "text": text}).to_string().into_bytes()
        };
        records.push(Rec {
            key: Some(id.clone().into_bytes()),
            value,
            partition: (i % partitions as usize) as i32,
        });
        good.push((id, text));
    }
    let mut bad = Vec::new();
    for k in 0..bad_per_kind {
        let kinds: [(Vec<u8>, &'static str); 5] = [
            (b"caf\xe9 au lait \xff".to_vec(), "invalid UTF-8"),
            (
                format!(r#"{{"id":"{prefix}-bad-num-{k}","text":{k}}}"#).into_bytes(),
                "\"text\" must be a string",
            ),
            (format!(r#"{{"id":"{prefix}-bad-missing-{k}"}}"#).into_bytes(), "missing \"text\""),
            (b"{this is not json".to_vec(), "not valid JSON"),
            (
                serde_json::json!({"id": "big", "text": "x".repeat(max_record_bytes)})
                    .to_string()
                    .into_bytes(),
                "exceeds the limit",
            ),
        ];
        for (j, (value, reason)) in kinds.into_iter().enumerate() {
            let key = format!("{prefix}-bad-{j}-{k}");
            records.push(Rec {
                key: Some(key.clone().into_bytes()),
                value: value.clone(),
                partition: ((k + j) % partitions as usize) as i32,
            });
            bad.push((key, value, reason));
        }
    }
    // Interleave bad records among the good ones (stable per partition order is what matters).
    let mut mixed = Vec::with_capacity(records.len());
    let (g, b): (Vec<_>, Vec<_>) = records.into_iter().enumerate().partition(|(i, _)| *i < n);
    let step = (n / b.len().max(1)).max(1);
    let mut bi = b.into_iter().map(|x| x.1);
    for (i, (_, r)) in g.into_iter().enumerate() {
        mixed.push(r);
        if i % step == step - 1 {
            mixed.extend(bi.next());
        }
    }
    mixed.extend(bi);
    Corpus { good, bad, records: mixed }
}
