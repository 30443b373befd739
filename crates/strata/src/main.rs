//! The `strata` command.

mod bench;
mod config_file;
mod generate;
mod hub;
mod loadgen;
mod model_ref;
mod router;
mod serve;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "strata",
    version,
    about = "An LLM inference engine with truthful prompt-token accounting"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the OpenAI-compatible API (default: the built-in model on 127.0.0.1:8000).
    Serve(Box<serve::ServeArgs>),
    /// Front prefill and decode engines (P/D disaggregation) with one
    /// OpenAI-compatible API.
    Router(router::RouterArgs),
    /// Generate text for one prompt or a file of prompts.
    Generate(generate::GenerateArgs),
    /// Many concurrent streaming clients against a server on loopback.
    Loadgen(loadgen::LoadgenArgs),
    /// Measure prefill and decode throughput.
    Bench(bench::BenchArgs),
    /// Write the built-in model as a checkpoint directory (config.json,
    /// model.safetensors, tokenizer files) that loads like any other.
    ExportBuiltin {
        /// Directory to write (created if missing).
        dir: std::path::PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let cli = match config_file::expand(args.clone()) {
        // A positional MODEL wins over the config file's `model:`.
        Ok(expanded) => Cli::try_parse_from(expanded).or_else(|e| {
            config_file::expand_without(args, &["model"])
                .ok()
                .and_then(|a| Cli::try_parse_from(a).ok())
                .ok_or(e)
        }),
        Err(e) => {
            eprintln!("error: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = cli.unwrap_or_else(|e| e.exit());
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve::run(*args),
        Command::Router(args) => router::run(args),
        Command::Generate(args) => generate::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Loadgen(args) => loadgen::run(args),
        Command::ExportBuiltin { dir } => model_ref::export_builtin(&dir),
    }
}
