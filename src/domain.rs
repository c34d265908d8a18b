//! Domain types parsed at the edge: user and item ids, rating values, validated ratings.

use funkrec_engine::Scale;
use serde::Serialize;
use std::fmt;
use unicode_normalization::{is_nfc, UnicodeNormalization};
use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};

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

/// The id rule, applied wherever an id enters (API paths and bodies, `import`):
/// - normalised to Unicode NFC, so canonically equivalent spellings (precomposed `é` or
///   `e` + combining accent) are one id;
/// - then 1–[`MAX_ID_CHARS`] characters, no control character (Cc), no format
///   character (Cf: zero-width, bidi overrides, soft hyphen, BOM, …), no leading or
///   trailing whitespace (which also refuses an all-whitespace id).
///
/// Ids stored under the older rule (any 1–128 characters without Cc) are read from the
/// store as they are; [`id_rule_violation`] names what the current rule would say.
fn parse_id(kind: &str, s: &str) -> Result<String, DomainError> {
    let id = if s.is_ascii() || is_nfc(s) {
        s.to_owned()
    } else {
        s.nfc().collect()
    };
    match id_rule_violation(&id) {
        None => Ok(id),
        Some(why) => Err(DomainError::InvalidId(format!("{kind} id {why}"))),
    }
}

/// Why the NFC string `s` is not a valid id under the current rule (`None` if it is);
/// the text follows "user id " or "item id ".
pub fn id_rule_violation(s: &str) -> Option<String> {
    let n = s.chars().count();
    if n == 0 {
        return Some("must not be empty".into());
    }
    if n > MAX_ID_CHARS {
        return Some(format!(
            "is {n} characters long, at most {MAX_ID_CHARS} are allowed"
        ));
    }
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Some(format!("contains the control character U+{:04X}", c as u32));
    }
    // (no ASCII character is a format character)
    let format = match s.is_ascii() {
        true => None,
        false => s
            .chars()
            .find(|c| c.general_category() == GeneralCategory::Format),
    };
    if let Some(c) = format {
        return Some(format!(
            "contains the invisible format character U+{:04X}",
            c as u32
        ));
    }
    if s.trim().is_empty() {
        return Some("must not be only whitespace".into());
    }
    if s.trim() != s {
        return Some("must not start or end with whitespace".into());
    }
    None
}

macro_rules! id_type {
    ($name:ident, $kind:literal) => {
        #[doc = concat!("A validated ", $kind, " id (NFC; the rule: `parse_id`).")]
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
    fn ids_that_look_the_same_are_the_same_or_refused() {
        // canonically equivalent spellings are one id (NFC)
        let pre = UserId::parse("caf\u{e9}").unwrap();
        let combining = UserId::parse("cafe\u{301}").unwrap();
        assert_eq!(pre, combining);
        assert_eq!(combining.as_str(), "caf\u{e9}");
        // whitespace at either end, whitespace only, invisible format characters: refused
        for bad in [
            "alice ",
            " alice",
            "\u{3000}alice",
            "alice\u{a0}",
            " ",
            "\u{2003}\u{2003}",
            "al\u{200b}ice",
            "\u{202e}ecila",
            "ali\u{ad}ce",
            "\u{feff}alice",
            "a\u{2066}b",
        ] {
            let e = UserId::parse(bad).unwrap_err().to_string();
            assert!(
                e.contains("whitespace") || e.contains("format character"),
                "{bad:?}: {e}"
            );
        }
        // inner spaces and visible non-ASCII stay allowed
        assert!(ItemId::parse("the matrix (1999)").is_ok());
        assert!(ItemId::parse("東京 🎬").is_ok());
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
        fn valid_ids_roundtrip(s in "[^\\p{Cc}\\p{Cf}\\p{M}\\s]{1,60}") {
            let s: String = s.nfc().collect();
            let id = UserId::parse(&s).unwrap();
            prop_assert_eq!(id.as_str(), s.as_str());
        }

        #[test]
        fn parsing_is_idempotent_and_nfc(s in "\\PC{0,6}\\p{M}{0,2}\\s?\\PC{0,4}") {
            if let Ok(id) = ItemId::parse(&s) {
                prop_assert!(is_nfc(id.as_str()));
                prop_assert_eq!(ItemId::parse(id.as_str()).unwrap(), id.clone());
            }
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
        fn id_length_counts_characters(c in "[^\\p{Cc}\\p{Cf}\\p{M}\\s]", n in 1usize..200) {
            // the limit counts the characters of the NFC form (some letters decompose)
            let s = c.repeat(n);
            let chars = s.nfc().count();
            prop_assert_eq!(UserId::parse(&s).is_ok(), chars <= MAX_ID_CHARS);
        }

        #[test]
        fn any_string_accepted_iff_rule_holds(s in "\\PC{0,3}[\\x00-\\x{a0}\\u{200b}\\u{202e}\\u{301}]{0,2}\\PC{0,3}") {
            let nfc: String = s.nfc().collect();
            let n = nfc.chars().count();
            let ends_blank = |c: Option<char>| c.is_some_and(char::is_whitespace);
            let ok = (1..=MAX_ID_CHARS).contains(&n)
                && !nfc.chars().any(|c| c.is_control() || c.general_category() == GeneralCategory::Format)
                && !ends_blank(nfc.chars().next())
                && !ends_blank(nfc.chars().last());
            prop_assert_eq!(ItemId::parse(&s).is_ok(), ok, "{:?}", s);
        }
    }
}
