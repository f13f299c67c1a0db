//! `trident node` (not built yet).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct NodeArgs {}

pub fn run(_args: NodeArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`trident node` is not available in this build yet")
}
