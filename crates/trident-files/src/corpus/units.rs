//! Input units: the row groups of the input Parquet files, in a fixed order, so that a job's
//! progress (the manifest), its shards (`--shard I/N`) and its parts are named the same way on
//! every run and every pod.

use std::path::{Path, PathBuf};

use parquet::file::reader::{FileReader, SerializedFileReader};

use trident_engine::EngineError;

/// One row group of one input file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    /// Position in the whole input's unit list (the same for every shard).
    pub index: usize,
    pub file: PathBuf,
    /// The file's path relative to the input root (what the manifest records).
    pub rel: String,
    pub row_group: usize,
    pub rows: usize,
}

impl Unit {
    /// The unit's name in manifests: `relative/path.parquet#row_group`.
    pub fn key(&self) -> String {
        format!("{}#{}", self.rel, self.row_group)
    }

    /// The output part of this unit: its index and a hash of its key, so a part is never
    /// mistaken for another input's.
    pub fn part_name(&self) -> String {
        let h = blake3::hash(self.key().as_bytes()).to_hex();
        format!("part-{:06}-{}.parquet", self.index, &h[..8])
    }
}

/// Whether `input` names Parquet: a `.parquet` file, a directory, or a glob.
pub fn is_parquet_input(input: &str) -> bool {
    input.ends_with(".parquet") || is_glob(input) || Path::new(input).is_dir()
}

fn is_glob(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// The input files, sorted, with the root their relative names start from.
pub fn discover(input: &str) -> Result<(PathBuf, Vec<PathBuf>), EngineError> {
    let err = |msg: String| EngineError::Input(format!("--input {input}: {msg}"));
    let path = Path::new(input);
    let (root, mut files) = if path.is_dir() {
        let mut files = Vec::new();
        let mut stack = vec![path.to_path_buf()];
        while let Some(dir) = stack.pop() {
            let entries = std::fs::read_dir(&dir).map_err(|e| err(e.to_string()))?;
            for entry in entries {
                let p = entry.map_err(|e| err(e.to_string()))?.path();
                let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.starts_with(['.', '_']) {
                    continue; // hidden files, _SUCCESS, trident's own _trident/
                }
                if p.is_dir() {
                    stack.push(p);
                } else if name.ends_with(".parquet") {
                    files.push(p);
                }
            }
        }
        (path.to_path_buf(), files)
    } else if is_glob(input) {
        let paths = glob::glob(input).map_err(|e| err(e.to_string()))?;
        let files: Vec<PathBuf> = paths.filter_map(Result::ok).filter(|p| p.is_file()).collect();
        // Names relative to the glob's fixed prefix directory.
        let fixed: PathBuf =
            path.components().take_while(|c| !is_glob(&c.as_os_str().to_string_lossy())).collect();
        (fixed, files)
    } else if path.is_file() {
        let root = path.parent().map(Path::to_path_buf).unwrap_or_default();
        (root, vec![path.to_path_buf()])
    } else {
        return Err(err("no such file or directory".into()));
    };
    files.sort();
    if files.is_empty() {
        return Err(err("no .parquet files found".into()));
    }
    Ok((root, files))
}

/// Every row group of `files`, in order (file, then row group).
pub fn units(root: &Path, files: &[PathBuf]) -> Result<Vec<Unit>, EngineError> {
    let mut out = Vec::new();
    for file in files {
        let f = std::fs::File::open(file)
            .map_err(|e| EngineError::Io { path: file.display().to_string(), source: e })?;
        let reader = SerializedFileReader::new(f).map_err(|e| {
            EngineError::Input(format!("{}: not a Parquet file: {e}", file.display()))
        })?;
        let rel = file.strip_prefix(root).unwrap_or(file).to_string_lossy().replace('\\', "/");
        for (rg, meta) in reader.metadata().row_groups().iter().enumerate() {
            out.push(Unit {
                index: out.len(),
                file: file.clone(),
                rel: rel.clone(),
                row_group: rg,
                rows: meta.num_rows() as usize,
            });
        }
    }
    Ok(out)
}

/// `I/N`: shard I (from 0) of N.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Shard {
    pub index: usize,
    pub count: usize,
}

impl Default for Shard {
    fn default() -> Self {
        Shard { index: 0, count: 1 }
    }
}

impl std::str::FromStr for Shard {
    type Err = String;
    fn from_str(s: &str) -> Result<Shard, String> {
        let bad = || format!("--shard {s:?}: expected I/N with 0 <= I < N, e.g. 0/4");
        let (i, n) = s.split_once('/').ok_or_else(bad)?;
        let (index, count) =
            (i.trim().parse().map_err(|_| bad())?, n.trim().parse().map_err(|_| bad())?);
        if count == 0 || index >= count {
            return Err(bad());
        }
        Ok(Shard { index, count })
    }
}

impl Shard {
    /// This shard's units: every N-th, so shards of a corpus of many small files and of one
    /// file of many row groups are both even.
    pub fn select(self, units: Vec<Unit>) -> Vec<Unit> {
        units.into_iter().filter(|u| u.index % self.count == self.index).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_partition_the_units() {
        let all: Vec<Unit> = (0..10)
            .map(|i| Unit {
                index: i,
                file: PathBuf::from("f"),
                rel: "f".into(),
                row_group: i,
                rows: 1,
            })
            .collect();
        let mut seen = Vec::new();
        for i in 0..4 {
            let s: Shard = format!("{i}/4").parse().unwrap();
            seen.extend(s.select(all.clone()).into_iter().map(|u| u.index));
        }
        seen.sort();
        assert_eq!(seen, (0..10).collect::<Vec<_>>());
        assert!("4/4".parse::<Shard>().is_err());
        assert!("1/0".parse::<Shard>().is_err());
        assert!("x".parse::<Shard>().unwrap_err().contains("I/N"));
        assert_ne!(all[0].part_name(), all[1].part_name());
    }
}
