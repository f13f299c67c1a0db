//! `trident embed` (not built yet).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct EmbedArgs {}

pub fn run(_args: EmbedArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`trident embed` is not available in this build yet")
}
