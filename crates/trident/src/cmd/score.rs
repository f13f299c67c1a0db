//! `trident score` (not built yet).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ScoreArgs {}

pub fn run(_args: ScoreArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`trident score` is not available in this build yet")
}
