//! Domain types parsed at the edge: user and item ids, rating values, validated ratings.

use funkrec_engine::Scale;
use serde::Serialize;
use std::fmt;

/// Longest id accepted, in characters.
pub const MAX_ID_CHARS: usize = 128;

/// Why an id or a rating was refused (the message is the one the API answers with).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DomainError {
    #[error("{0}")]
    InvalidId(String),
    #[error("{0}")]
    InvalidRating(String),
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

/// A validated rating, ready for the store.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRating {
    pub user: UserId,
    pub item: ItemId,
    pub value: RatingValue,
    pub timestamp: i64,
}

impl NewRating {
    /// Validates the user and item ids (in that order) and the value.
    pub fn parse(
        user: &str,
        item: &str,
        value: f64,
        timestamp: i64,
        scale: &Scale,
    ) -> Result<Self, DomainError> {
        Ok(NewRating {
            user: UserId::parse(user)?,
            item: ItemId::parse(item)?,
            value: RatingValue::parse(value, scale)?,
            timestamp,
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

        #[test]
        fn any_f64_accepted_iff_finite_and_in_scale(v in proptest::num::f64::ANY) {
            let s = Scale { min: 0.5, max: 10.0 };
            let ok = v.is_finite() && (0.5..=10.0).contains(&v);
            prop_assert_eq!(RatingValue::parse(v, &s).is_ok(), ok);
            if let Ok(r) = RatingValue::parse(v, &s) {
                prop_assert!(s.contains(r.get()), "stored f32 {} left the scale", r.get());
            }
        }

        #[test]
        fn id_length_counts_characters(c in "[^\\p{Cc}]", n in 1usize..200) {
            let s = c.repeat(n);
            prop_assert_eq!(UserId::parse(&s).is_ok(), n <= MAX_ID_CHARS);
        }

        #[test]
        fn any_string_accepted_iff_rule_holds(s in "\\PC{0,3}[\\x00-\\x{a0}]{0,2}\\PC{0,3}") {
            let n = s.chars().count();
            let ok = (1..=MAX_ID_CHARS).contains(&n) && !s.chars().any(char::is_control);
            prop_assert_eq!(ItemId::parse(&s).is_ok(), ok, "{:?}", s);
        }
    }
}
