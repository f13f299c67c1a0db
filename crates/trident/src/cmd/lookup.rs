//! `trident lookup --redis URL ID...`: print the stored results (the same JSON objects
//! `trident embed` writes), one line per id, in the order given. A missing id prints
//! `{"id": .., "error": "not found"}` and makes the exit code 1.

use std::process::ExitCode;

use trident_core::types::error_json;
use trident_core::DocId;

#[derive(clap::Args)]
pub struct LookupArgs {
    /// Redis URL (redis://HOST:PORT).
    #[arg(long, env = "TRIDENT_REDIS")]
    pub redis: String,
    /// Key prefix used by the nodes (default trident).
    #[arg(long, default_value = "trident", env = "TRIDENT_KEY_PREFIX")]
    pub key_prefix: String,
    /// Document ids (as the nodes saw them: JSON numbers in decimal form).
    #[arg(required = true)]
    pub ids: Vec<String>,
}

pub fn run(args: LookupArgs) -> anyhow::Result<ExitCode> {
    let ids: Vec<DocId> = args.ids.iter().map(|s| DocId::Str(s.clone())).collect();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let found = rt.block_on(trident_engine::store::lookup(&args.redis, &args.key_prefix, &ids))?;
    let mut missing = false;
    for (id, hit) in ids.iter().zip(found) {
        match hit {
            Some(json) => println!("{json}"),
            None => {
                missing = true;
                println!("{}", error_json(id, "not found"));
            }
        }
    }
    Ok(if missing { ExitCode::from(1) } else { ExitCode::SUCCESS })
}
