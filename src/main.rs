//! `baofs` binary: parse the command line, set up logging, run, report errors plainly.
use std::process::ExitCode;

use clap::Parser;

use baofs::cli::{Cli, Command};

fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(4)
        .enable_all()
        .build()?;
    match cli.command {
        Command::Mount(args) => runtime.block_on(baofs::app::run_mount(args))?,
        Command::Status(args) => runtime.block_on(baofs::app::run_status(args))?,
        Command::Csi(args) => runtime.block_on(baofs::csi_app::run_csi(args))?,
        Command::Holder(args) => runtime.block_on(baofs::holder::run(&args.state_dir))?,
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    baofs::telemetry::init(&cli.log_level, cli.log_format_json);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("baofs: error: {e}");
            ExitCode::FAILURE
        }
    }
}
