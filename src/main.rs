//! `baofs` binary: parse the command line, set up logging, run.
use clap::Parser;

use baofs::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    baofs::telemetry::init(&cli.log_level, cli.log_format_json);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Mount(args) => runtime.block_on(baofs::app::run_mount(args))?,
    }
    Ok(())
}
