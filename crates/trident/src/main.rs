//! `trident`: the one binary. Each subcommand lives in its own module under `cmd/`.

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

mod cmd;
mod root;

#[derive(Parser)]
#[command(
    name = "trident",
    version,
    about = "BGE-M3 embeddings (dense, sparse, ColBERT) from streams of text"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Embed JSON Lines documents from a file or stdin; write one JSON object per line.
    Embed(cmd::embed::EmbedArgs),
    /// Score (query, passage) pairs with dense, lexical and ColBERT similarity.
    Score(cmd::score::ScoreArgs),
    /// Measure encoder throughput on a corpus.
    Bench(cmd::bench::BenchArgs),
    /// Evaluate retrieval (dense, sparse, ColBERT, hybrids) on a BEIR-format dataset.
    Eval(cmd::eval::EvalArgs),
    /// Run a cluster node: Kafka in, Kafka/Redis out.
    Node(cmd::node::NodeArgs),
    /// Load a corpus (Parquet or JSON Lines) into a Kafka topic as `trident node` reads it.
    Produce(cmd::produce::ProduceArgs),
    /// Print stored results from the Redis result store by document id.
    Lookup(cmd::lookup::LookupArgs),
    /// Serve the HTTP API.
    Serve(cmd::serve::ServeArgs),
}

fn main() -> std::process::ExitCode {
    // Flags, `TRIDENT_*` variables and the `--config` file, layered (root::layered).
    let matches = match root::layered::parse(Cli::command(), std::env::args_os().collect()) {
        Ok(m) => m,
        Err(e) => {
            eprintln!("trident: error: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let result = match cli.command {
        Command::Embed(a) => cmd::embed::run(a),
        Command::Score(a) => cmd::score::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Eval(a) => cmd::eval::run(a),
        Command::Node(a) => cmd::node::run(a),
        Command::Produce(a) => cmd::produce::run(a),
        Command::Lookup(a) => cmd::lookup::run(a),
        Command::Serve(a) => cmd::serve::run(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("trident: error: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}
