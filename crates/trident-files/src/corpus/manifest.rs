//! The job's manifest, beside its output (`DIR/_trident/manifest-I-of-N.json`): the settings and
//! model that made the output, and which input units are done in which part. Written
//! atomically (temporary file, fsync, rename) after each part is complete, so a job killed at
//! any point resumes from the last finished unit and no row is written twice.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trident_core::{Encoding, Modes};

use super::units::Shard;
use trident_engine::EngineError;

/// What must be equal for two runs to share an output (resume) or rows (`--previous`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// `codec::model_fingerprint` of the model directory.
    pub model: String,
    pub modes: Modes,
    pub max_length: usize,
    pub encoding: Encoding,
    pub id_column: String,
    pub text_column: String,
    pub keep_columns: Vec<String>,
}

impl Settings {
    /// The first setting that differs, named for the user.
    pub fn difference(&self, other: &Settings) -> Option<String> {
        let pairs: [(&str, String, String); 8] = [
            ("model (fingerprint)", self.model.clone(), other.model.clone()),
            ("modes", format!("{:?}", self.modes), format!("{:?}", other.modes)),
            ("--max-length", self.max_length.to_string(), other.max_length.to_string()),
            ("--dense-encoding", self.encoding.dense.to_string(), other.encoding.dense.to_string()),
            (
                "--colbert-encoding",
                self.encoding.colbert.to_string(),
                other.encoding.colbert.to_string(),
            ),
            ("--id-column", self.id_column.clone(), other.id_column.clone()),
            ("--text-column", self.text_column.clone(), other.text_column.clone()),
            ("--keep-columns", self.keep_columns.join(","), other.keep_columns.join(",")),
        ];
        pairs
            .into_iter()
            .find(|(_, a, b)| a != b)
            .map(|(name, a, b)| format!("{name}: {b} there, {a} here"))
    }
}

/// One finished unit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UnitDone {
    pub part: String,
    pub rows: u64,
    pub failed: u64,
    pub reused: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub trident: String,
    pub settings: Settings,
    pub shard: Shard,
    /// Unit key (`file#row_group`) → its part.
    pub units: BTreeMap<String, UnitDone>,
}

pub fn dir(out: &Path) -> PathBuf {
    out.join("_trident")
}

pub fn path(out: &Path, shard: Shard) -> PathBuf {
    dir(out).join(format!("manifest-{}-of-{}.json", shard.index, shard.count))
}

impl Manifest {
    pub fn new(settings: Settings, shard: Shard) -> Manifest {
        Manifest {
            trident: env!("CARGO_PKG_VERSION").into(),
            settings,
            shard,
            units: BTreeMap::new(),
        }
    }

    pub fn load(path: &Path) -> Result<Manifest, EngineError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| EngineError::Io { path: path.display().to_string(), source: e })?;
        serde_json::from_str(&text).map_err(|e| {
            EngineError::Input(format!("{}: not a trident manifest: {e}", path.display()))
        })
    }

    /// Every manifest in `out` (all shards of an earlier job).
    pub fn load_all(out: &Path) -> Result<Vec<Manifest>, EngineError> {
        let d = dir(out);
        let entries = std::fs::read_dir(&d).map_err(|e| {
            EngineError::Input(format!("{}: no trident output here ({e})", out.display()))
        })?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("manifest-") && n.ends_with(".json"))
            })
            .collect();
        paths.sort();
        paths.iter().map(|p| Manifest::load(p)).collect()
    }

    /// Write atomically: a reader (or a resumed job) sees the old or the new manifest, whole.
    pub fn save(&self, out: &Path) -> Result<(), EngineError> {
        let io = |p: &Path, e| EngineError::Io { path: p.display().to_string(), source: e };
        let d = dir(out);
        std::fs::create_dir_all(&d).map_err(|e| io(&d, e))?;
        let target = path(out, self.shard);
        let tmp = target.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io(&tmp, e))?;
        f.write_all(serde_json::to_string_pretty(self).expect("manifest serialises").as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &target).map_err(|e| io(&target, e))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            model: "abc".into(),
            modes: Modes::ALL,
            max_length: 8192,
            encoding: Encoding::default(),
            id_column: "id".into(),
            text_column: "text".into(),
            keep_columns: vec![],
        }
    }

    #[test]
    fn saves_loads_and_names_differences() {
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest::new(settings(), Shard { index: 1, count: 4 });
        m.units.insert(
            "a.parquet#0".into(),
            UnitDone { part: "part-000000-x.parquet".into(), rows: 3, failed: 0, reused: 1 },
        );
        m.save(dir.path()).unwrap();
        let back = Manifest::load(&path(dir.path(), m.shard)).unwrap();
        assert_eq!(back, m);
        assert_eq!(Manifest::load_all(dir.path()).unwrap(), vec![m]);
        let mut other = settings();
        other.max_length = 512;
        assert_eq!(settings().difference(&other).unwrap(), "--max-length: 512 there, 8192 here");
        assert_eq!(settings().difference(&settings()), None);
    }
}
