//! The special token ids the sparse head excludes (cls, eos, pad, unk), read the way the
//! reference reads them: from the tokenizer's special-token map.

use std::path::Path;

use serde_json::Value;

use crate::config::ModelConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SpecialIds {
    pub cls: u32,
    pub pad: u32,
    pub eos: u32,
    pub unk: u32,
}

impl SpecialIds {
    /// XLM-R's layout as the config states it; `<unk>` is 3 there (config.json does not name it).
    pub fn from_config(c: &ModelConfig) -> Self {
        SpecialIds { cls: c.bos_token_id, pad: c.pad_token_id, eos: c.eos_token_id, unk: 3 }
    }

    /// The ids excluded from lexical weights.
    pub fn excluded(&self) -> [u32; 4] {
        [self.cls, self.eos, self.pad, self.unk]
    }

    /// Token strings from `special_tokens_map.json` (XLM-R's defaults if absent), ids from
    /// `tokenizer.json`'s added tokens; the config's ids where a file is missing.
    pub fn from_dir(dir: &Path, c: &ModelConfig) -> Self {
        let mut ids = Self::from_config(c);
        let Ok(text) = std::fs::read_to_string(dir.join("tokenizer.json")) else { return ids };
        #[derive(serde::Deserialize)]
        struct Added {
            id: u32,
            content: String,
        }
        #[derive(serde::Deserialize)]
        struct Tok {
            #[serde(default)]
            added_tokens: Vec<Added>,
        }
        let Ok(tok) = serde_json::from_str::<Tok>(&text) else { return ids };
        let names = TokenNames::from_dir(dir);
        let find = |s: &str| tok.added_tokens.iter().find(|a| a.content == s).map(|a| a.id);
        if let Some(i) = find(&names.cls) {
            ids.cls = i;
        }
        if let Some(i) = find(&names.pad) {
            ids.pad = i;
        }
        if let Some(i) = find(&names.eos) {
            ids.eos = i;
        }
        if let Some(i) = find(&names.unk) {
            ids.unk = i;
        }
        ids
    }
}

/// The strings of the special tokens.
pub(crate) struct TokenNames {
    pub cls: String,
    pub pad: String,
    pub eos: String,
    pub unk: String,
}

impl TokenNames {
    pub fn from_dir(dir: &Path) -> Self {
        let mut n = TokenNames {
            cls: "<s>".into(),
            pad: "<pad>".into(),
            eos: "</s>".into(),
            unk: "<unk>".into(),
        };
        let Ok(text) = std::fs::read_to_string(dir.join("special_tokens_map.json")) else {
            return n;
        };
        let Ok(map) = serde_json::from_str::<Value>(&text) else { return n };
        let get = |k: &str| -> Option<String> {
            match map.get(k)? {
                Value::String(s) => Some(s.clone()),
                Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
                _ => None,
            }
        };
        if let Some(s) = get("cls_token") {
            n.cls = s;
        }
        if let Some(s) = get("pad_token") {
            n.pad = s;
        }
        if let Some(s) = get("eos_token") {
            n.eos = s;
        }
        if let Some(s) = get("unk_token") {
            n.unk = s;
        }
        n
    }
}
