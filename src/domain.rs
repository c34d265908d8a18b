//! Domain types parsed at the edge: user and item ids, rating values, incoming ratings.

use crate::engine::Scale;
use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Why an id or a rating was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DomainError {
    InvalidId(String),
    InvalidRating(String),
}

impl fmt::Display for DomainError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DomainError::InvalidId(m) | DomainError::InvalidRating(m) => f.write_str(m),
        }
    }
}

fn parse_id(kind: &str, s: &str) -> Result<String, DomainError> {
    let n = s.chars().count();
    if n == 0 {
        return Err(DomainError::InvalidId(format!(
            "{kind} id must not be empty"
        )));
    }
    if n > MAX_ID_CHARS {
        return Err(DomainError::InvalidId(format!(
            "{kind} id is {n} characters long, at most {MAX_ID_CHARS} are allowed"
        )));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(DomainError::InvalidId(format!(
            "{kind} id contains the control character U+{:04X}",
            c as u32
        )));
    }
    Ok(s.to_owned())
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("A validated ", $kind, " id: 1–128 printable characters.")]
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, DomainError> {
                parse_id($kind, s).map($name)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(UserId, "user");
id_type!(ItemId, "item");

/// A rating value: finite and inside the configured scale.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(transparent)]
pub struct RatingValue(f32);

impl RatingValue {
    pub fn parse(v: f64, scale: &Scale) -> Result<Self, DomainError> {
        if !v.is_finite() {
            return Err(DomainError::InvalidRating(
                "rating must be a finite number".into(),
            ));
        }
        if v < scale.min as f64 || v > scale.max as f64 {
            return Err(DomainError::InvalidRating(format!(
                "rating {v} is outside the scale {}..{}",
                scale.min, scale.max
            )));
        }
        Ok(RatingValue(v as f32))
    }
    pub fn get(self) -> f32 {
        self.0
    }
}

/// An id as it arrives in JSON: a string, or an integer normalised to its decimal form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawId(pub String);

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RawId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or an integer id")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId(v.to_owned()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<RawId, E> {
                Ok(RawId(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawId, E> {
                Ok(RawId(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawId, E> {
                Ok(RawId(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

/// One rating as posted (before validation). Unknown fields are refused.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RatingInput {
    pub user: RawId,
    pub item: RawId,
    pub rating: f64,
    /// Unix seconds; the server's clock when absent.
    #[serde(default)]
    pub timestamp: Option<i64>,
}

/// A validated rating, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRating {
    pub user: UserId,
    pub item: ItemId,
    pub value: RatingValue,
    pub timestamp: i64,
}

impl NewRating {
    pub fn parse(input: RatingInput, scale: &Scale, now: i64) -> Result<Self, DomainError> {
        Ok(NewRating {
            user: UserId::parse(&input.user.0)?,
            item: ItemId::parse(&input.item.0)?,
            value: RatingValue::parse(input.rating, scale)?,
            timestamp: input.timestamp.unwrap_or(now),
        })
    }
}

/// Current time in Unix seconds.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids() {
        assert!(UserId::parse("alice").is_ok());
        assert!(UserId::parse("ü🎬 x/y").is_ok());
        assert!(UserId::parse("").is_err());
        assert!(UserId::parse(&"a".repeat(128)).is_ok());
        assert!(UserId::parse(&"a".repeat(129)).is_err());
        assert!(
            UserId::parse(&"é".repeat(128)).is_ok(),
            "limit counts characters"
        );
        assert!(ItemId::parse("a\nb").is_err());
        assert!(ItemId::parse("a\u{7f}").is_err());
        assert!(ItemId::parse("\u{0}").is_err());
        assert!(ItemId::parse("a\u{85}").is_err());
    }

    #[test]
    fn raw_ids_normalise_integers() {
        let r: RatingInput =
            serde_json::from_str(r#"{"user": 42, "item": -7, "rating": 3}"#).unwrap();
        assert_eq!(r.user.0, "42");
        assert_eq!(r.item.0, "-7");
        assert!(
            serde_json::from_str::<RatingInput>(r#"{"user": 1.5, "item": "a", "rating": 3}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<RatingInput>(r#"{"user": true, "item": "a", "rating": 3}"#)
                .is_err()
        );
        assert!(serde_json::from_str::<RatingInput>(
            r#"{"user": "u", "item": "a", "rating": 3, "x": 1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<RatingInput>(
            r#"{"user": "u", "item": "a", "rating": "3"}"#
        )
        .is_err());
    }

    #[test]
    fn ratings() {
        let s = Scale { min: 1.0, max: 5.0 };
        assert_eq!(RatingValue::parse(1.0, &s).unwrap().get(), 1.0);
        assert_eq!(RatingValue::parse(5.0, &s).unwrap().get(), 5.0);
        assert!(RatingValue::parse(0.99, &s).is_err());
        assert!(RatingValue::parse(5.01, &s).is_err());
        assert!(RatingValue::parse(f64::NAN, &s).is_err());
        assert!(RatingValue::parse(f64::INFINITY, &s).is_err());
        assert!(RatingValue::parse(1e300, &s).is_err());
    }

    proptest! {
        #[test]
        fn valid_ids_roundtrip(s in "[^\\p{Cc}]{1,128}") {
            let id = UserId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
        }

        #[test]
        fn any_control_char_is_refused(a in "[a-z]{0,10}", c in "\\p{Cc}", b in "[a-z]{0,10}") {
            let s = format!("{a}{c}{b}");
            prop_assert!(ItemId::parse(&s).is_err());
        }

        #[test]
        fn in_scale_iff_accepted(v in -10.0f64..10.0) {
            let s = Scale { min: 1.0, max: 5.0 };
            prop_assert_eq!(RatingValue::parse(v, &s).is_ok(), (1.0..=5.0).contains(&v));
        }
    }
}
