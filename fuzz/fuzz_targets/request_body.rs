//! Any bytes as the body of `POST /v1/ratings`, through the handler's own parsing and
//! validation (`parse_ratings_body`): never a panic; every error is a 4xx the API documents;
//! everything accepted is a valid rating, and re-posting it is accepted unchanged.
#![no_main]
use funkrec::domain::{ItemId, UserId};
use funkrec::http::body::{parse_ratings_body, BodyLimits};
use funkrec_engine::Scale;
use libfuzzer_sys::fuzz_target;

const LIMITS: BodyLimits = BodyLimits {
    max_batch: 64,
    scale: Scale { min: 1.0, max: 5.0 },
};

fuzz_target!(|data: &[u8]| {
    match parse_ratings_body(data, &LIMITS, 1_700_000_000) {
        Ok(list) => {
            assert!(!list.is_empty() && list.len() <= LIMITS.max_batch);
            let mut again = Vec::with_capacity(list.len());
            for r in &list {
                assert!(UserId::parse(r.user.as_str()).is_ok());
                assert!(ItemId::parse(r.item.as_str()).is_ok());
                assert!(LIMITS.scale.contains(r.value.get()));
                again.push(serde_json::json!({
                    "user": r.user.as_str(), "item": r.item.as_str(),
                    "rating": r.value.get(), "timestamp": r.timestamp,
                }));
            }
            let body = serde_json::to_vec(&serde_json::json!({ "ratings": again })).unwrap();
            let back = parse_ratings_body(&body, &LIMITS, 0).expect("accepted ratings re-parse");
            assert_eq!(back, list);
        }
        Err(e) => {
            let status = e.status_and_code().0.as_u16();
            assert!(matches!(status, 400 | 413 | 422), "{status} for {e}");
        }
    }
});
