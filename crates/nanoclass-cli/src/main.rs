//! `nanoclass`: train, evaluate and predict image classifiers by transfer learning.
//!
//! Flags are parsed by clap into raw structs, turned into the library's validated option
//! structs, and run; an error is printed once with its whole chain and the exit code is 1.

mod calibrate;
mod capture;
mod cli;
mod eval;
mod export;
mod live;
mod predict;
mod quantize;
mod studio;
mod train;
mod verify;
mod weights;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        // A closed stdout (`nanoclass predict ... | head`) ends the output quietly.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
