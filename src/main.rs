//! The `funkrec` binary: everything lives in the library.
use std::process::ExitCode;

fn main() -> ExitCode {
    match funkrec::commands::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
