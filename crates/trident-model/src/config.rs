//! `config.json` of an XLM-RoBERTa checkpoint: every dimension the encoder uses comes from here.

use std::path::Path;

use serde::Deserialize;

use crate::error::ModelError;

fn default_type_vocab() -> usize {
    1
}
fn default_eps() -> f64 {
    1e-5
}
fn default_pad() -> u32 {
    1
}
fn default_bos() -> u32 {
    0
}
fn default_eos() -> u32 {
    2
}
fn default_act() -> String {
    "gelu".into()
}

#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ModelConfig {
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    pub vocab_size: usize,
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    pub type_vocab_size: usize,
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pad")]
    pub pad_token_id: u32,
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub position_embedding_type: Option<String>,
}

impl ModelConfig {
    /// The shape of XLM-RoBERTa-large as BAAI/bge-m3 ships it.
    pub fn xlmr_large() -> Self {
        ModelConfig {
            hidden_size: 1024,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            intermediate_size: 4096,
            vocab_size: 250002,
            max_position_embeddings: 8194,
            type_vocab_size: 1,
            layer_norm_eps: 1e-5,
            pad_token_id: 1,
            bos_token_id: 0,
            eos_token_id: 2,
            hidden_act: "gelu".into(),
            position_embedding_type: Some("absolute".into()),
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ModelError> {
        if !path.exists() {
            return Err(ModelError::MissingFile { what: "config.json", path: path.to_path_buf() });
        }
        let text = std::fs::read_to_string(path).map_err(|e| ModelError::io(path, e))?;
        Self::from_json(&text).map_err(|msg| ModelError::Config { path: path.to_path_buf(), msg })
    }

    pub fn from_json(text: &str) -> Result<Self, String> {
        let c: ModelConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        c.validate()?;
        Ok(c)
    }

    /// Checks what the encoder relies on; the message names the offending key.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("hidden_size", self.hidden_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("intermediate_size", self.intermediate_size),
            ("vocab_size", self.vocab_size),
            ("type_vocab_size", self.type_vocab_size),
        ];
        for (k, v) in positive {
            if v == 0 {
                return Err(format!("`{k}` must be > 0"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "`hidden_size` ({}) must be a multiple of `num_attention_heads` ({})",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.max_position_embeddings < 3 + self.pad_token_id as usize {
            return Err(format!(
                "`max_position_embeddings` ({}) leaves no room for a token after the padding offset",
                self.max_position_embeddings
            ));
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!("`layer_norm_eps` must be positive, got {}", self.layer_norm_eps));
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "`hidden_act` must be \"gelu\" (exact erf GELU), got {:?}",
                self.hidden_act
            ));
        }
        if let Some(p) = &self.position_embedding_type {
            if p != "absolute" {
                return Err(format!("`position_embedding_type` must be \"absolute\", got {p:?}"));
            }
        }
        for (k, v) in [
            ("pad_token_id", self.pad_token_id),
            ("bos_token_id", self.bos_token_id),
            ("eos_token_id", self.eos_token_id),
        ] {
            if v as usize >= self.vocab_size {
                return Err(format!("`{k}` ({v}) is not below `vocab_size` ({})", self.vocab_size));
            }
        }
        Ok(())
    }

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Longest sequence (specials included) the position table can hold: positions start at
    /// `pad_token_id + 1`.
    pub fn max_sequence_length(&self) -> usize {
        self.max_position_embeddings - self.pad_token_id as usize - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_bad_heads() {
        let mut c = ModelConfig::xlmr_large();
        c.num_attention_heads = 7;
        assert!(c.validate().unwrap_err().contains("num_attention_heads"));
        assert_eq!(ModelConfig::xlmr_large().max_sequence_length(), 8192);
    }

    #[test]
    fn missing_key_is_named() {
        let e = ModelConfig::from_json(r#"{"hidden_size": 8}"#).unwrap_err();
        assert!(e.contains("num_hidden_layers"), "{e}");
    }
}
