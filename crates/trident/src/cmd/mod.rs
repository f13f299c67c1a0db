//! One module per subcommand; each exposes `XArgs` (clap) and `run(XArgs) -> Result<ExitCode>`.

pub mod bench;
pub mod embed;
pub mod eval;
pub mod lookup;
pub mod node;
pub mod produce;
pub mod score;
pub mod serve;

/// Logging for the long-running commands (`node`, `serve`): `TRIDENT_LOG` (an `EnvFilter`,
/// default `info`) to stderr.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TRIDENT_LOG")
        .unwrap_or_else(|_| "info".into());
    let _ =
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// A max length (`flag`: the option's name) must hold `<s>` and `</s>`.
pub fn check_max_length(flag: &str, n: usize) -> anyhow::Result<()> {
    anyhow::ensure!(n >= 2, "{flag} {n} is too small (at least 2: <s> and </s>)");
    Ok(())
}
