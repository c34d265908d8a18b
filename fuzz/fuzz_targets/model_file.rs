//! Any bytes as a model file: a verified model or an error, never a panic or a huge
//! allocation. The input is wrapped in a valid magic and checksum so the fuzzer reaches
//! the parser behind the CRC (raw inputs are also tried as they are).
#![no_main]
use funkrec_engine::persist::{self, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = persist::from_bytes(data);
    let mut framed = MAGIC.to_vec();
    framed.extend_from_slice(data);
    let crc = crc32fast::hash(&framed);
    framed.extend_from_slice(&crc.to_le_bytes());
    if let Ok(model) = persist::from_bytes(&framed) {
        assert_eq!(model.user_factors.nrows(), model.users.len());
        assert_eq!(model.item_factors.nrows(), model.items.len());
        // A parsed model round-trips through the writer.
        assert_eq!(persist::from_bytes(&persist::to_bytes(&model)).unwrap(), model);
    }
});
