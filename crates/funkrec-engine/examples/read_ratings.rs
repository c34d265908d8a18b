//! Reads a ratings file with the engine's reader and prints rows, bytes and read throughput.
//!
//! `cargo run --profile test -p funkrec-engine --example read_ratings -- FILE [tab|dat|csv]`

use funkrec_engine::io::{Format, RatingsReader};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = PathBuf::from(
        args.next()
            .ok_or("usage: read_ratings FILE [tab|dat|csv]")?,
    );
    let format = match args.next().as_deref() {
        None => None,
        Some("tab") => Some(Format::Tab),
        Some("dat") => Some(Format::Dat),
        Some("csv") => Some(Format::Csv),
        Some(other) => return Err(format!("unknown format {other}").into()),
    };
    let start = Instant::now();
    let mut reader = RatingsReader::open(&path, format)?;
    let (mut rows, mut sum) = (0u64, 0.0f64);
    reader.for_each_row(|row| {
        rows += 1;
        sum += row.value as f64 + (row.user.len() + row.item.len()) as f64;
        Ok(())
    })?;
    let secs = start.elapsed().as_secs_f64();
    let mb = reader.total_bytes() as f64 / 1e6;
    println!(
        "{rows} rows, {mb:.1} MB in {secs:.3} s: {:.1} MB/s, {:.2} M rows/s (checksum {sum})",
        mb / secs,
        rows as f64 / secs / 1e6
    );
    Ok(())
}
