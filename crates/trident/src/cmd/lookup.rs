//! `trident lookup` (not built yet).

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct LookupArgs {}

pub fn run(_args: LookupArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("`trident lookup` is not available in this build yet")
}
