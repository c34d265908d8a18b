//! Request ids: a random UUID (version 4) per request from a thread-local generator, without a system call per request.

use axum::http::{HeaderValue, Request};
use rand::RngCore;
use tower_http::request_id::{MakeRequestId, RequestId};

/// Makes `x-request-id` values for requests that bring none (or bring one that
/// `hygiene` dropped). tower-http's `MakeRequestUuid` asks the kernel for 16 random
/// bytes on every request (`getrandom`); this draws them from rand's thread-local
/// generator (a CSPRNG seeded, and periodically reseeded, from the OS).
#[derive(Debug, Clone, Copy, Default)]
pub struct MakeRequestUuidV4;

impl MakeRequestId for MakeRequestUuidV4 {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<RequestId> {
        let mut b = [0u8; 16];
        rand::thread_rng().fill_bytes(&mut b);
        HeaderValue::from_str(&uuid_v4(b)).ok().map(RequestId::new)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `bytes` as a hyphenated version 4, variant 1 UUID (RFC 9562).
fn uuid_v4(mut b: [u8; 16]) -> String {
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let mut s = String::with_capacity(36);
    for (i, byte) in b.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            s.push('-');
        }
        s.push(HEX[(byte >> 4) as usize] as char);
        s.push(HEX[(byte & 0xf) as usize] as char);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_well_formed_v4_uuids_and_differ() {
        assert_eq!(uuid_v4([0; 16]), "00000000-0000-4000-8000-000000000000");
        assert_eq!(uuid_v4([0xff; 16]), "ffffffff-ffff-4fff-bfff-ffffffffffff");
        let req = Request::new(());
        let mut make = MakeRequestUuidV4;
        let a = make.make_request_id(&req).unwrap();
        let b = make.make_request_id(&req).unwrap();
        let a = a.header_value().to_str().unwrap().to_owned();
        assert_ne!(a, b.header_value().to_str().unwrap());
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert!("89ab".contains(&a[19..20]), "{a}");
    }
}
