//! The `funkrec` binary: everything lives in the library.
use std::process::ExitCode;

/// mimalloc: serving allocates small short-lived buffers on every request (ids, bit
/// sets, JSON), which it serves from per-thread pages without glibc's locking and
/// consolidation (docs/benchmarks.md, "Allocator").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    match funkrec::commands::main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
