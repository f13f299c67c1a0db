//! The text → ids step, exactly as the reference's fast tokenizer does it with
//! `truncation=True, max_length=L` (SPEC §3.2), on top of the `tokenizers` crate.

use std::path::{Path, PathBuf};

use rayon::prelude::*;
use trident_core::TokenizedDoc;

use crate::error::ModelError;
use crate::special::{SpecialIds, TokenNames};

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    special: SpecialIds,
    path: PathBuf,
}

impl Tokenizer {
    /// `tokenizer.json` (+ `special_tokens_map.json` when present) from a model directory.
    pub fn from_dir(dir: &Path) -> Result<Self, ModelError> {
        Self::load(&dir.join("tokenizer.json"), TokenNames::from_dir(dir))
    }

    /// A bare `tokenizer.json`; special tokens are XLM-R's (`<s>`, `<pad>`, `</s>`, `<unk>`).
    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        Self::load(path, TokenNames::from_dir(dir))
    }

    fn load(path: &Path, names: TokenNames) -> Result<Self, ModelError> {
        if !path.is_file() {
            return Err(ModelError::MissingFile {
                what: "tokenizer.json",
                path: path.to_path_buf(),
            });
        }
        let err = |msg: String| ModelError::Tokenizer { path: path.to_path_buf(), msg };
        let mut inner = tokenizers::Tokenizer::from_file(path).map_err(|e| err(e.to_string()))?;
        // Truncation is ours (per call); padding never applies to single texts.
        inner.with_truncation(None).map_err(|e| err(e.to_string()))?;
        inner.with_padding(None);
        let id = |s: &str| {
            inner
                .token_to_id(s)
                .ok_or_else(|| err(format!("special token {s:?} is not in the vocabulary")))
        };
        let special = SpecialIds {
            cls: id(&names.cls)?,
            pad: id(&names.pad)?,
            eos: id(&names.eos)?,
            unk: id(&names.unk)?,
        };
        Ok(Tokenizer { inner, special, path: path.to_path_buf() })
    }

    pub fn special_ids(&self) -> SpecialIds {
        self.special
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Vocabulary size including added tokens.
    /// The piece of every id (`pieces()[id]`), specials included.
    pub fn pieces(&self) -> Vec<String> {
        let vocab = self.inner.get_vocab(true);
        let mut pieces = vec![String::new(); vocab.values().max().map_or(0, |&m| m as usize + 1)];
        for (piece, id) in vocab {
            pieces[id as usize] = piece;
        }
        pieces
    }

    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// `<s> pieces </s>`; if longer than `max_length`, the first `max_length − 2` pieces are kept
    /// and `</s>` re-added. `max_length` ≤ 1 cannot hold the specials: the reference then does
    /// not truncate at all, and neither do we.
    pub fn encode(&self, text: &str, max_length: usize) -> Result<TokenizedDoc, ModelError> {
        let enc =
            self.inner.encode_fast(text, true).map_err(|e| ModelError::Tokenize(e.to_string()))?;
        let mut ids = enc.get_ids().to_vec();
        let truncated = max_length > 1 && ids.len() > max_length;
        if truncated {
            // The template is `<s> $A </s>`: keeping the first max_length−1 ids and appending
            // `</s>` equals truncating the pieces to max_length−2 before adding the specials.
            ids.truncate(max_length - 1);
            ids.push(self.special.eos);
        }
        Ok(TokenizedDoc { ids, truncated })
    }

    /// `encode` for many texts, in parallel on the current rayon pool; results in input order.
    pub fn encode_batch(
        &self,
        texts: &[&str],
        max_length: usize,
    ) -> Result<Vec<TokenizedDoc>, ModelError> {
        texts.par_iter().map(|t| self.encode(t, max_length)).collect()
    }
}
