//! The composition root: the one place where settings become parts. Every command parses its
//! flags here ([`layered`]: flag > `TRIDENT_*` environment > `--config` TOML > default, one
//! validation by clap), resolves its model ([`hub`]: a directory or a hub id) and builds its
//! workers for the same placement settings ([`placement`]). Environment variables are read
//! here and nowhere below: the engine, the endpoints and the backends get options passed in.

pub mod hub;
pub mod layered;
pub mod placement;

/// Logging for every command: `TRIDENT_LOG` (an `EnvFilter`, default `info`) to stderr.
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

/// The batching policy of `--batch-tokens` and `--max-wait-ms`.
pub fn batch_policy(batch_tokens: usize, max_wait_ms: u64) -> trident_engine::BatchPolicy {
    trident_engine::BatchPolicy {
        batch_tokens,
        max_wait: std::time::Duration::from_millis(max_wait_ms),
        ..Default::default()
    }
}

/// The tokio runtime of the commands that run the engine.
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Resolves on SIGTERM or SIGINT (the long-running commands' stop).
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received; stopping"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; stopping"),
    }
}
