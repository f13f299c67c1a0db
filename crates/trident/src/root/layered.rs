//! One layered configuration for every command: a flag beats its `TRIDENT_*` environment
//! variable, which beats the `--config` TOML file, which beats the default.
//!
//! clap resolves flags, environment and defaults; the file is layered in between by reading it
//! after a first parse and adding, for each of its keys, the flag that key names — only where
//! neither the command line nor the environment set that flag. The command line is then parsed
//! again, so a file's values get exactly the validation the flags get, and a key that is not a
//! flag of the command is an error naming it. `trident node` has the same keys, layered the same
//! way by `trident_cluster::config` (which also takes its librdkafka tables).
//!
//! ```toml
//! # trident embed --config embed.toml    (keys are the flags, `_` or `-`)
//! model = "BAAI/bge-m3"
//! device = "cuda:0"
//! precision = "bf16"
//! batch_tokens = 32768
//! colbert = true
//! ```

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::parser::ValueSource;
use clap::{ArgMatches, Command};
use trident_cluster::{ClusterError, NodeConfig};

/// The id of the `--config` flag each command that takes a file has.
const CONFIG: &str = "config";

/// `--config FILE`, flattened into every command's flags.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ConfigFile {
    /// TOML file with any of this command's settings (keys named as the flags, `_` or `-`);
    /// flags and `TRIDENT_*` variables win over it.
    #[arg(long, env = "TRIDENT_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Parse `argv` for `cmd`, with the file named by `--config` (or `TRIDENT_CONFIG`) layered
/// under flags and environment. Errors are clap's (they print usage and exit) or name the file
/// and the key.
pub fn parse(cmd: Command, argv: Vec<OsString>) -> Result<ArgMatches, String> {
    let cmd = with_env(cmd);
    // A setting the file gives may be missing from the command line (a required `--model`):
    // without a clean parse, find the file in a lenient one.
    let matches = match cmd.clone().try_get_matches_from(&argv) {
        Ok(m) => m,
        Err(e) if e.use_stderr() => match lenient(&cmd).try_get_matches_from(&argv) {
            Ok(m) if config_of(&m).is_some() => m,
            _ => e.exit(),
        },
        Err(e) => e.exit(), // --help, --version
    };
    let Some((name, sub, path)) = config_of(&matches) else { return Ok(matches) };
    let sub_cmd = cmd.find_subcommand(name).expect("parsed subcommand exists");
    let extra = file_flags(sub_cmd, sub, &path)?;
    let mut argv = argv;
    argv.extend(extra);
    cmd.try_get_matches_from(&argv)
        .map_err(|e| format!("--config {}: {}", path.display(), e.render()))
}

/// Every flag of every command (but `node`, whose settings layer their own environment) can
/// come from `TRIDENT_<FLAG>` (`--batch-tokens`: `TRIDENT_BATCH_TOKENS`), shown in `--help`.
fn with_env(cmd: Command) -> Command {
    cmd.mut_subcommands(|sub| {
        if sub.get_name() == "node" {
            return sub;
        }
        sub.mut_args(|a| match a.get_long() {
            Some(long) if a.get_env().is_none() && !matches!(long, "help" | "version") => {
                let var = format!("TRIDENT_{}", long.to_uppercase().replace('-', "_"));
                // clap keeps `&'static str` names: a few dozen short strings, once per process.
                a.env(&*var.leak())
            }
            _ => a,
        })
    })
}

/// The command with every subcommand parsing leniently (missing or bad values allowed).
fn lenient(cmd: &Command) -> Command {
    let names: Vec<String> = cmd.get_subcommands().map(|s| s.get_name().to_string()).collect();
    names.iter().fold(cmd.clone().ignore_errors(true), |c, n| {
        c.mut_subcommand(n.as_str(), |s| s.ignore_errors(true))
    })
}

/// The subcommand, its matches and its `--config` file, when it has one (`node` layers its
/// own, with its Kafka tables).
fn config_of(m: &ArgMatches) -> Option<(&str, &ArgMatches, PathBuf)> {
    let (name, sub) = m.subcommand()?;
    if name == "node" || !sub.ids().any(|id| id.as_str() == CONFIG) {
        return None;
    }
    let path = sub.get_one::<PathBuf>(CONFIG)?.clone();
    Some((name, sub, path))
}

/// `trident node`'s settings: the same order (flag > `TRIDENT_*` env > file > default), over
/// [`NodeConfig`]'s keys and its librdkafka tables; `flags` serialises only the flags given.
pub fn node_config(
    file: Option<&Path>,
    flags: &impl serde::Serialize,
) -> anyhow::Result<NodeConfig> {
    use figment::providers::{Env, Format, Serialized, Toml};
    let mut fig = figment::Figment::from(Serialized::defaults(NodeConfig::default()));
    if let Some(path) = file {
        anyhow::ensure!(path.is_file(), "--config: file {} does not exist", path.display());
        fig = fig.merge(Toml::file(path));
    }
    let fig = fig
        .merge(Env::prefixed("TRIDENT_").ignore(&["config", "fault_inject", "log"]))
        .merge(Serialized::defaults(flags));
    let cfg: NodeConfig = fig.extract().map_err(|e| ClusterError::config(e.path.join("."), e))?;
    cfg.validate()?;
    Ok(cfg)
}

/// The flags the file adds: one per key whose flag the command line and environment left at
/// its default.
fn file_flags(cmd: &Command, given: &ArgMatches, path: &Path) -> Result<Vec<OsString>, String> {
    let at = |msg: String| format!("--config {}: {msg}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| at(e.to_string()))?;
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| at(e.to_string()))?;
    let mut out = Vec::new();
    for (key, value) in &table {
        let id = key.replace('-', "_");
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id().as_str() == id && a.get_long().is_some() && id != CONFIG)
            .ok_or_else(|| {
                at(format!("`{key}` is not a setting of `trident {}` (see --help)", cmd.get_name()))
            })?;
        let long = arg.get_long().expect("checked");
        if matches!(
            given.value_source(&id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let takes_value = arg.get_action().takes_values();
        let scalar = |v: &toml::Value| -> Result<String, String> {
            match v {
                toml::Value::String(s) => Ok(s.clone()),
                toml::Value::Integer(i) => Ok(i.to_string()),
                toml::Value::Float(f) => Ok(f.to_string()),
                toml::Value::Boolean(b) => Ok(b.to_string()),
                other => {
                    Err(at(format!("`{key}`: expected a string, number or boolean, got {other}")))
                }
            }
        };
        match value {
            toml::Value::Boolean(b) if !takes_value => {
                if *b {
                    out.push(format!("--{long}").into());
                }
            }
            toml::Value::Array(items) => {
                for v in items {
                    out.push(format!("--{long}={}", scalar(v)?).into());
                }
            }
            v => out.push(format!("--{long}={}", scalar(v)?).into()),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{Args, FromArgMatches, Parser, Subcommand};

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        cmd: Sub,
    }

    #[derive(Subcommand, Debug)]
    enum Sub {
        Run(RunArgs),
    }

    #[derive(Args, Debug)]
    struct RunArgs {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Required, and given by the file only.
        #[arg(long)]
        model: String,
        #[arg(long, env = "TRIDENT_LAYERED_TEST_GROUP", default_value = "default")]
        group: String,
        #[arg(long, default_value_t = 1)]
        workers: usize,
        #[arg(long, default_value_t = 8)]
        batch: usize,
        #[arg(long)]
        dense: bool,
        #[arg(long, value_delimiter = ',')]
        devices: Vec<usize>,
    }

    fn run(file: &str, args: &[&str]) -> Result<RunArgs, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.toml");
        std::fs::write(&path, format!("model = \"m\"\n{file}")).unwrap();
        let mut argv: Vec<OsString> = vec!["t".into(), "run".into(), "--config".into()];
        argv.push(path.into());
        argv.extend(args.iter().map(OsString::from));
        let m = parse(<Cli as clap::CommandFactory>::command(), argv)?;
        let Sub::Run(a) = Cli::from_arg_matches(&m).unwrap().cmd;
        Ok(a)
    }

    #[test]
    fn flag_over_env_over_file_over_default() {
        // The env var is set once, for this test's whole process: no other test reads it.
        std::env::set_var("TRIDENT_LAYERED_TEST_GROUP", "env");
        let file = "group = \"file\"\nworkers = 3\ndense = true\ndevices = [0, 1]\n";
        let a = run(file, &["--workers", "2"]).unwrap();
        assert_eq!(a.workers, 2, "flag beats file");
        assert_eq!(a.group, "env", "env beats file");
        assert_eq!(a.batch, 8, "default where nothing sets it");
        assert!(a.dense);
        assert_eq!(a.devices, [0, 1]);
        assert_eq!(a.model, "m", "a required flag given by the file only");
        let a = run("batch = 1\n", &[]).unwrap();
        assert_eq!(a.batch, 1, "file beats default");
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_file_and_key() {
        let e = run("colour = \"red\"\n", &[]).unwrap_err();
        assert!(e.contains("t.toml") && e.contains("`colour`"), "{e}");
        let e = run("devices = [[1]]\n", &[]).unwrap_err();
        assert!(e.contains("`devices`"), "{e}");
        let e = run("workers = \n", &[]).unwrap_err();
        assert!(e.contains("t.toml"), "{e}");
        let e = run("workers = \"many\"\n", &[]).unwrap_err();
        assert!(e.contains("t.toml") && e.contains("--workers"), "{e}");
    }

    #[derive(serde::Serialize)]
    struct NodeFlags {
        #[serde(skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment's Jail API returns its own error type
    fn node_flag_over_env_over_file_over_default() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "n.toml",
                "model = \"m\"\ninput_topic = \"in\"\noutput_topic = \"out\"\ngroup = \"file\"\nbatch_tokens = 99\nworkers = 3\n[kafka]\n\"fetch.max.bytes\" = 1024\n",
            )?;
            jail.set_env("TRIDENT_GROUP", "env");
            jail.set_env("TRIDENT_WORKERS", "2");
            let file = Some(Path::new("n.toml"));
            let c = node_config(file, &NodeFlags { group: Some("flag".into()) }).unwrap();
            assert_eq!(c.group, "flag");
            assert_eq!(c.workers, 2);
            assert_eq!(c.batch_tokens, 99);
            assert_eq!(c.max_length, 8192);
            assert_eq!(trident_cluster::config::kafka_value(&c.kafka["fetch.max.bytes"]), "1024");
            let c = node_config(file, &NodeFlags { group: None }).unwrap();
            assert_eq!(c.group, "env");
            assert!(
                node_config(Some(Path::new("missing.toml")), &NodeFlags { group: None }).is_err()
            );
            Ok(())
        });
    }
}
