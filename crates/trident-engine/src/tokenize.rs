//! Tokenizing records in bounded memory. The tokenizer materialises every piece of a text
//! (ids, offsets, strings: ~80 bytes a token) before truncating, so a 200 KB document costs
//! megabytes however short `max_length` is. Two bounds:
//! - a long text is first tokenized from a prefix ending before a space, 16 bytes a token of
//!   `max_length` (at least 4 KiB): Metaspace splits at spaces, so the prefix's pieces are the
//!   text's first pieces; when the prefix alone is over `max_length` (the result is truncated)
//!   the ids are exactly those of the whole text, else the whole text is tokenized;
//! - texts go to the tokenizer in groups of at most [`GROUP_BYTES`].

use trident_core::TokenizedDoc;
use trident_model::Tokenizer;

/// Text bytes handed to one `encode_batch` call.
pub const GROUP_BYTES: usize = 2 << 20;

/// The prefix of `text` to try first, when `text` is long enough for one to help.
pub fn bounded_prefix(text: &str, max_length: usize) -> Option<&str> {
    let budget = max_length.saturating_mul(16).max(4096);
    if text.len() <= budget {
        return None;
    }
    // Bytes below 0x80 are whole characters in UTF-8, so a space's index is a char boundary.
    let cut = text.as_bytes()[..budget].iter().rposition(|&b| b == b' ')?;
    (cut > 0).then(|| &text[..cut])
}

/// Tokenize `(text, max_length)` pairs; one result per text, in order. A batch call that fails
/// falls back to one text at a time, so one bad text does not fail the others.
pub fn tokenize_all(
    tok: &Tokenizer,
    texts: &[(String, usize)],
) -> Vec<Result<TokenizedDoc, String>> {
    let mut out: Vec<Option<Result<TokenizedDoc, String>>> = vec![None; texts.len()];
    // Prefixes first; a prefix that is not over max_length is redone whole below.
    let tries: Vec<(usize, &str, usize)> = texts
        .iter()
        .enumerate()
        .map(|(i, (t, len))| (i, bounded_prefix(t, *len).unwrap_or(t), *len))
        .collect();
    for (i, r) in encode_grouped(tok, &tries) {
        let whole = tries[i].1.len() == texts[i].0.len();
        match r {
            Ok(d) if whole || d.truncated => out[i] = Some(Ok(d)),
            Err(e) if whole => out[i] = Some(Err(e)),
            _ => {}
        }
    }
    let rest: Vec<(usize, &str, usize)> = (0..texts.len())
        .filter(|&i| out[i].is_none())
        .map(|i| (i, texts[i].0.as_str(), texts[i].1))
        .collect();
    for (i, r) in encode_grouped(tok, &rest) {
        out[i] = Some(r);
    }
    out.into_iter().map(|o| o.expect("every text tokenized")).collect()
}

/// `encode_batch` over groups of one max length and at most [`GROUP_BYTES`] of text.
fn encode_grouped(
    tok: &Tokenizer,
    items: &[(usize, &str, usize)],
) -> Vec<(usize, Result<TokenizedDoc, String>)> {
    let mut lengths: Vec<usize> = items.iter().map(|t| t.2).collect();
    lengths.sort_unstable();
    lengths.dedup();
    let mut out = Vec::with_capacity(items.len());
    for len in lengths {
        let same: Vec<(usize, &str)> =
            items.iter().filter(|t| t.2 == len).map(|&(i, t, _)| (i, t)).collect();
        let mut start = 0;
        let mut bytes = 0;
        for (n, (_, text)) in same.iter().enumerate() {
            bytes += text.len();
            if bytes >= GROUP_BYTES || n + 1 == same.len() {
                encode_group(tok, &same[start..=n], len, &mut out);
                start = n + 1;
                bytes = 0;
            }
        }
    }
    out
}

fn encode_group(
    tok: &Tokenizer,
    group: &[(usize, &str)],
    len: usize,
    out: &mut Vec<(usize, Result<TokenizedDoc, String>)>,
) {
    let strs: Vec<&str> = group.iter().map(|g| g.1).collect();
    match tok.encode_batch(&strs, len) {
        Ok(docs) if docs.len() == group.len() => {
            out.extend(group.iter().map(|g| g.0).zip(docs.into_iter().map(Ok)));
        }
        _ => out
            .extend(group.iter().map(|&(i, t)| (i, tok.encode(t, len).map_err(|e| e.to_string())))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokenizer() -> Tokenizer {
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-m3");
        Tokenizer::from_dir(&dir).unwrap()
    }

    /// Long texts of every kind give the ids and truncation flag of whole-text tokenization.
    #[test]
    fn prefixes_give_the_whole_texts_ids() {
        let tok = tokenizer();
        let words = [
            "lorem",
            "ipsum",
            "Straße",
            "数据模型向量",
            "🙂🚀",
            "e\u{301}",
            "a",
            "  ",
            "\t",
            "naïve",
        ];
        let mut seed = 7u64;
        let mut texts = Vec::new();
        for (k, len) in [(0, 8), (1, 16), (2, 128), (3, 300), (4, 2000), (5, 8192)] {
            let mut t = String::new();
            while t.len() < 40_000 + k * 1000 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                t.push_str(words[(seed >> 33) as usize % words.len()]);
                t.push(if seed.is_multiple_of(7) { '\n' } else { ' ' });
            }
            texts.push((t, len));
        }
        texts.push(("数".repeat(20_000), 16)); // no space: tokenized whole
        texts.push(("short text".into(), 16));
        let got = tokenize_all(&tok, &texts);
        for ((t, len), g) in texts.iter().zip(got) {
            let want = tok.encode(t, *len).unwrap();
            assert_eq!(g.unwrap(), want, "max_length {len}");
        }
        assert!(bounded_prefix(&texts[0].0, 8).is_some_and(|p| p.len() <= 4096));
    }
}
