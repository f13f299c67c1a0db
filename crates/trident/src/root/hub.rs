//! `--model` resolution: a local checkpoint directory, or a Hugging Face hub id
//! (`BAAI/bge-m3`, optionally `@revision`) downloaded into the hub cache with `hf-hub`.
//! The cache honours `HF_HOME` and `HF_ENDPOINT`; files already cached are not fetched again.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use hf_hub::api::sync::ApiBuilder;
use hf_hub::{Repo, RepoType};

/// Files a BGE-M3 directory needs besides its weights; the weights are `model.safetensors`,
/// else `pytorch_model.bin`.
const REQUIRED: [&str; 4] =
    ["config.json", "tokenizer.json", "colbert_linear.pt", "sparse_linear.pt"];
/// Tokenizer metadata that names the special tokens; used when the repository has it.
const OPTIONAL: [&str; 2] = ["special_tokens_map.json", "tokenizer_config.json"];
const WEIGHTS: [&str; 2] = ["model.safetensors", "pytorch_model.bin"];

/// As [`resolve_model`], for a `--model` parsed as a path.
pub fn resolve_model_path(arg: &Path) -> anyhow::Result<PathBuf> {
    resolve_model(&arg.to_string_lossy())
}

/// Returns the model directory for `--model`: the path itself when it exists, else the hub
/// snapshot directory after downloading what is missing.
pub fn resolve_model(arg: &str) -> anyhow::Result<PathBuf> {
    let path = Path::new(arg);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if path.exists() {
        bail!("--model {arg}: expected a model directory, found a file");
    }
    let Some((id, revision)) = parse_hub_id(arg) else {
        bail!("--model {arg}: no such directory (and not a hub id like BAAI/bge-m3)");
    };
    download(id, revision).with_context(|| {
        format!("--model {arg}: not a local directory; downloading it as a hub id failed")
    })
}

/// `owner/name` or `owner/name@revision`, each part of letters, digits, `-`, `_`, `.`.
fn parse_hub_id(s: &str) -> Option<(&str, Option<&str>)> {
    let (id, revision) = match s.split_once('@') {
        Some((id, rev)) if !rev.is_empty() => (id, Some(rev)),
        Some(_) => return None,
        None => (s, None),
    };
    let (owner, name) = id.split_once('/')?;
    let ok = |p: &str| {
        !p.is_empty()
            && !p.starts_with('.')
            && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    };
    (ok(owner) && ok(name)).then_some((id, revision))
}

fn download(id: &str, revision: Option<&str>) -> anyhow::Result<PathBuf> {
    let api = ApiBuilder::from_env()
        .with_progress(std::io::stderr().is_terminal())
        .with_retries(3)
        .build()
        .context("setting up the hub client")?;
    let repo = match revision {
        Some(rev) => Repo::with_revision(id.to_string(), RepoType::Model, rev.to_string()),
        None => Repo::new(id.to_string(), RepoType::Model),
    };
    let repo = api.repo(repo);
    let mut config = None;
    for file in REQUIRED {
        let p = repo.get(file).with_context(|| format!("downloading {file} from {id}"))?;
        config.get_or_insert(p);
    }
    for file in OPTIONAL {
        // Absent in some repositories; the tokenizer then uses XLM-R's special-token names.
        if let Err(e) = repo.get(file) {
            tracing::debug!("{id}: no {file}: {e}");
        }
    }
    let mut errors = Vec::new();
    for file in WEIGHTS {
        match repo.get(file) {
            Ok(_) => {
                errors.clear();
                break;
            }
            Err(e) => errors.push(format!("{file}: {e}")),
        }
    }
    if !errors.is_empty() {
        bail!("{id} has no usable weights ({})", errors.join("; "));
    }
    let config = config.expect("REQUIRED is not empty");
    Ok(config.parent().context("hub cache path has no parent")?.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_are_recognised() {
        assert_eq!(parse_hub_id("BAAI/bge-m3"), Some(("BAAI/bge-m3", None)));
        assert_eq!(parse_hub_id("BAAI/bge-m3@main"), Some(("BAAI/bge-m3", Some("main"))));
        assert_eq!(parse_hub_id("bge-m3"), None);
        assert_eq!(parse_hub_id("./models/bge-m3"), None);
        assert_eq!(parse_hub_id("/abs/path"), None);
        assert_eq!(parse_hub_id("a/b/c"), None);
        assert_eq!(parse_hub_id("BAAI/bge-m3@"), None);
    }

    #[test]
    fn missing_path_that_is_not_an_id_is_named() {
        let e = resolve_model("no/such/dir").unwrap_err().to_string();
        assert!(e.contains("no/such/dir") && e.contains("no such directory"), "{e}");
    }
}
