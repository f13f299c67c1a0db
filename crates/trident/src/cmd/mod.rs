//! One module per subcommand; each exposes `XArgs` (clap) and `run(XArgs) -> Result<ExitCode>`.

pub mod bench;
pub mod embed;
pub mod eval;
pub mod lookup;
pub mod node;
pub mod produce;
pub mod score;
pub mod serve;
