//! The `funkrec` binary: everything lives in the library.
fn main() -> anyhow::Result<()> {
    funkrec::cli::main()
}
