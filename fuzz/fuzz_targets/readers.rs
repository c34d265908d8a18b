//! Any bytes, in any format or detected: the readers return rows or an error, never panic.
#![no_main]
use funkrec_engine::io::{Format, RatingsReader};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let (fmt, body) = match data.split_first() {
        Some((b, rest)) => (
            match b % 4 {
                0 => None,
                1 => Some(Format::Tab),
                2 => Some(Format::Dat),
                _ => Some(Format::Csv),
            },
            rest,
        ),
        None => (None, data),
    };
    let input = Box::new(std::io::Cursor::new(body.to_vec()));
    if let Ok(reader) = RatingsReader::from_reader(Path::new("fuzz"), input, body.len() as u64, fmt) {
        for row in reader {
            match row {
                Ok(r) => assert!(r.value.is_finite() && !r.user.is_empty() && !r.item.is_empty()),
                Err(_) => break,
            }
        }
    }
});
