//! The body of `POST /v1/ratings`: its JSON types (with their OpenAPI schemas) and
//! [`parse_ratings_body`], the whole check from bytes to validated ratings.

use crate::domain::{DomainError, NewRating, MAX_ID_CHARS};
use crate::http::error::ApiError;
use funkrec_engine::Scale;
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::fmt;
use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Schema, Type};
use utoipa::openapi::RefOr;

/// The id rule as an ECMA-262 / Python regular expression (for the OpenAPI document): no
/// leading or trailing whitespace, no control character (Cc) and no format character (Cf)
/// of the Basic Multilingual Plane (a unit test checks the list against Unicode; the few
/// Cf characters above U+FFFF cannot be written in a pattern both dialects read).
pub const ID_PATTERN: &str = r"^(?!\s)(?!.*\s$)[^\u0000-\u001F\u007F-\u009F\u00AD\u0600-\u0605\u061C\u06DD\u070F\u0890-\u0891\u08E2\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u206F\uFEFF\uFFF9-\uFFFB]*$";

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
            /// JSON Schema counts `7.0` as an integer, so it is the id `7` too. Only
            /// within ±(2⁵³−1), where the float is exactly the number written: serde_json
            /// also hands integers beyond the 64-bit range here, rounded, and those are
            /// refused rather than silently becoming another id.
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawId, E> {
                match integral_f64(v) {
                    Some(i) => Ok(RawId(i.to_string())),
                    None => Err(E::invalid_type(de::Unexpected::Float(v), &self)),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// Largest integer up to which every integer is exactly an f64 (2⁵³ − 1).
pub const MAX_SAFE_INTEGER: f64 = 9_007_199_254_740_991.0;

/// `v` as an integer when it is integral and within ±[`MAX_SAFE_INTEGER`].
pub(crate) fn integral_f64(v: f64) -> Option<i64> {
    (v.fract() == 0.0 && v.abs() <= MAX_SAFE_INTEGER).then_some(v as i64)
}

/// An optional `i64` that also takes an integral JSON float (`1700000000.0`) within
/// ±(2⁵³−1), as JSON Schema's `integer` does.
fn integral_i64_opt<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    struct V;
    impl Visitor<'_> for V {
        type Value = Option<i64>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an integer (Unix seconds) or null")
        }
        fn visit_none<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_unit<E: de::Error>(self) -> Result<Option<i64>, E> {
            Ok(None)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<Option<i64>, E> {
            Ok(Some(v))
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<Option<i64>, E> {
            i64::try_from(v)
                .map(Some)
                .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
        fn visit_f64<E: de::Error>(self, v: f64) -> Result<Option<i64>, E> {
            match integral_f64(v) {
                Some(i) => Ok(Some(i)),
                None => Err(E::invalid_type(de::Unexpected::Float(v), &self)),
            }
        }
    }
    d.deserialize_any(V)
}

/// The string form of an id in the OpenAPI document (path segments and JSON strings).
pub fn id_string_schema() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_CHARS))
        .pattern(Some(ID_PATTERN))
}

impl utoipa::PartialSchema for RawId {
    fn schema() -> RefOr<Schema> {
        OneOfBuilder::new()
            .description(Some(
                "1–128 characters (after NFC) without control or format characters and \
                 without leading or trailing whitespace, or an integer \
                 (normalised to its decimal string)",
            ))
            .item(id_string_schema())
            .item(
                ObjectBuilder::new()
                    .schema_type(Type::Integer)
                    .minimum(Some(i64::MIN as isize))
                    .maximum(Some(u64::MAX as usize)),
            )
            .into()
    }
}

impl utoipa::ToSchema for RawId {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Id")
    }
}

/// One rating as posted (before validation). Unknown fields are refused.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingInput {
    pub user: RawId,
    pub item: RawId,
    /// Finite, inside the configured scale `[model.scale.min, model.scale.max]`.
    pub rating: f64,
    /// Unix seconds; the server's clock when absent.
    #[serde(default, deserialize_with = "integral_i64_opt")]
    #[schema(minimum = -9223372036854775808i64, maximum = 9223372036854775807i64)]
    pub timestamp: Option<i64>,
}

impl RatingInput {
    /// The validated rating; `now` when the input has no timestamp.
    pub fn validate(self, scale: &Scale, now: i64) -> Result<NewRating, DomainError> {
        let timestamp = self.timestamp.unwrap_or(now);
        NewRating::parse(&self.user.0, &self.item.0, self.rating, timestamp, scale)
    }
}

/// A batch of ratings (schema only: the handler reads the body as [`Value`] first so that
/// it can tell a single rating from a batch and name the failing entry).
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RatingBatch {
    /// 1 … `server.max_batch` ratings; all-or-nothing, the last rating of a repeated
    /// (user, item) pair wins.
    #[schema(min_items = 1)]
    pub ratings: Vec<RatingInput>,
}

/// The body of `POST /v1/ratings`: one rating or a batch.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(untagged)]
pub enum RatingsBody {
    One(RatingInput),
    Batch(RatingBatch),
}

/// The limits `POST /v1/ratings` validates against.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BodyLimits {
    pub max_batch: usize,
    pub scale: Scale,
}

/// Everything `POST /v1/ratings` does with the bytes of a request body, short of storing:
/// JSON syntax, shape (single rating or `{"ratings": [...]}`), batch size, ids and values.
/// `now` fills in absent timestamps. Errors are the ones the API answers with.
pub fn parse_ratings_body(
    body: &[u8],
    limits: &BodyLimits,
    now: i64,
) -> Result<Vec<NewRating>, ApiError> {
    let value = parse_strict_json(body)?;
    let (raw, batch) = rating_inputs(value, limits.max_batch)?;
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| {
            r.validate(&limits.scale, now).map_err(|e| {
                if batch {
                    match e {
                        DomainError::InvalidId(m) => {
                            ApiError::InvalidId(format!("ratings[{i}]: {m}"))
                        }
                        DomainError::InvalidRating(m) => {
                            ApiError::InvalidRating(format!("ratings[{i}]: {m}"))
                        }
                    }
                } else {
                    e.into()
                }
            })
        })
        .collect()
}

/// Longest key quoted in a duplicate-key error.
const MAX_QUOTED_KEY_CHARS: usize = 64;

/// Parses JSON into a [`Value`], refusing an object that names a key twice
/// (`400 invalid_body`): serde_json would silently keep the last one.
pub fn parse_strict_json(body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice::<StrictValue>(body) {
        Ok(StrictValue(v)) => Ok(v),
        // the only data error StrictValue raises is the duplicate key
        Err(e) if e.classify() == serde_json::error::Category::Data => Err(ApiError::DuplicateKey(
            format!("the body is ambiguous: {e}"),
        )),
        Err(e) => Err(ApiError::MalformedJson(format!(
            "the body is not valid JSON: {e}"
        ))),
    }
}

/// A JSON value whose objects have distinct keys.
struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(4096));
        while let Some(StrictValue(v)) = seq.next_element()? {
            out.push(v);
        }
        Ok(Value::Array(out))
    }
    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                let shown: String = key.chars().take(MAX_QUOTED_KEY_CHARS).collect();
                let cut = if shown.len() < key.len() { "…" } else { "" };
                return Err(de::Error::custom(format_args!(
                    "the key `{shown}{cut}` appears more than once in one object"
                )));
            }
            let StrictValue(v) = map.next_value()?;
            out.insert(key, v);
        }
        Ok(Value::Object(out))
    }
}

/// Turns the posted JSON into raw inputs: a single rating object or `{"ratings": [...]}`.
fn rating_inputs(body: Value, max_batch: usize) -> Result<(Vec<RatingInput>, bool), ApiError> {
    match body {
        Value::Object(mut m) if m.contains_key("ratings") => {
            if m.len() != 1 {
                let extra: Vec<_> = m.keys().filter(|k| *k != "ratings").cloned().collect();
                return Err(ApiError::InvalidBody(format!(
                    "a batch has only the field `ratings`; unknown field(s): {}",
                    extra.join(", ")
                )));
            }
            let Some(Value::Array(list)) = m.remove("ratings") else {
                return Err(ApiError::InvalidBody("`ratings` must be an array".into()));
            };
            if list.is_empty() {
                return Err(ApiError::EmptyBatch("`ratings` is empty".into()));
            }
            if list.len() > max_batch {
                return Err(ApiError::BatchTooLarge(format!(
                    "batch of {} ratings, at most {max_batch} are accepted",
                    list.len()
                )));
            }
            let parsed = list
                .into_iter()
                .enumerate()
                .map(|(i, v)| {
                    serde_json::from_value(v)
                        .map_err(|e| ApiError::InvalidBody(format!("ratings[{i}]: {e}")))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((parsed, true))
        }
        v @ Value::Object(_) => {
            let one =
                serde_json::from_value(v).map_err(|e| ApiError::InvalidBody(e.to_string()))?;
            Ok((vec![one], false))
        }
        _ => Err(ApiError::InvalidBody(
            "expected a rating object or {\"ratings\": [...]}".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{ItemId, UserId};
    use proptest::prelude::*;

    #[test]
    fn the_id_pattern_lists_every_bmp_control_and_format_character() {
        use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
        let class = ID_PATTERN
            .split_once("[^")
            .and_then(|(_, r)| r.split_once("]*$"))
            .unwrap()
            .0;
        let mut ranges = Vec::new();
        let hex = |h: &str| u32::from_str_radix(h, 16).unwrap();
        for part in class.split("\\u").skip(1) {
            match part.split_once('-') {
                Some((a, "")) => ranges.push((hex(a), None)),
                _ => {
                    if let Some((lo, None)) = ranges.last().copied() {
                        ranges.pop();
                        ranges.push((lo, Some(hex(part))));
                    } else {
                        ranges.push((hex(part), Some(hex(part))));
                    }
                }
            }
        }
        let listed = |c: u32| {
            ranges
                .iter()
                .any(|&(lo, hi)| (lo..=hi.unwrap()).contains(&c))
        };
        for c in (0..=0xFFFFu32).filter_map(char::from_u32) {
            let refused = c.is_control() || c.general_category() == GeneralCategory::Format;
            assert_eq!(listed(c as u32), refused, "U+{:04X}", c as u32);
        }
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
    fn duplicate_keys_are_refused_at_any_depth() {
        for body in [
            r#"{"user":"a","user":"b","item":"i","rating":3}"#,
            r#"{"ratings":[{"user":"a","item":"i","rating":3,"rating":5}]}"#,
            r#"{"ratings":[],"ratings":[{"user":"a","item":"i","rating":3}]}"#,
            r#"{"user":"a","item":"i","rating":3,"timestamp":{"x":1,"x":2}}"#,
        ] {
            let e = parse_ratings_body(body.as_bytes(), &LIMITS, 0).unwrap_err();
            assert_eq!(
                e.status_and_code(),
                (
                    axum::http::StatusCode::BAD_REQUEST,
                    crate::http::error::ErrorCode::InvalidBody
                ),
                "{body}: {e}"
            );
            assert!(e.to_string().contains("more than once"), "{e}");
        }
        let e = parse_ratings_body(br#"{"user":"a""#, &LIMITS, 0).unwrap_err();
        assert_eq!(e.code(), crate::http::error::ErrorCode::MalformedJson);
        // strict parsing keeps every value as serde_json reads it
        let v = parse_strict_json(br#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":1e400}"#);
        assert!(v.is_err(), "1e400 is out of range: {v:?}");
        let v = parse_strict_json(
            br#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"u":18446744073709551615}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a":[1,-2,3.5,"x",null,true,{"b":{}}],"u":18446744073709551615u64})
        );
    }

    #[test]
    fn integral_floats_parse_exactly() {
        // found by the proptest below: without serde_json's `float_roundtrip` this parsed as
        // ...817.5 and was refused (and a rating could be off by one ulp)
        let r: RatingInput = serde_json::from_str(
            r#"{"user": -3772251820622817.0, "item": 9007199254740991.0, "rating": 3}"#,
        )
        .unwrap();
        assert_eq!(r.user.0, "-3772251820622817");
        assert_eq!(r.item.0, "9007199254740991");
    }

    proptest! {
        #[test]
        fn integer_ids_normalise_to_decimal(i in any::<i64>(), u in any::<u64>()) {
            let body = format!(r#"{{"user": {i}, "item": {u}, "rating": 3}}"#);
            let r: RatingInput = serde_json::from_str(&body).unwrap();
            prop_assert_eq!(r.user.0, i.to_string());
            prop_assert_eq!(r.item.0, u.to_string());
        }

        #[test]
        fn integral_floats_are_integers_within_2_pow_53(i in -(1i64 << 54)..(1i64 << 54)) {
            let body = format!(r#"{{"user": {i}.0, "item": "x", "rating": 3, "timestamp": {i}.0}}"#);
            let r = serde_json::from_str::<RatingInput>(&body);
            if i.unsigned_abs() <= MAX_SAFE_INTEGER as u64 {
                let r = r.unwrap();
                prop_assert_eq!(r.user.0, i.to_string());
                prop_assert_eq!(r.timestamp, Some(i));
            } else {
                prop_assert!(r.is_err());
            }
        }

        #[test]
        fn body_parser_never_panics_on_bytes(body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse_ratings_body(&body, &LIMITS, 0);
        }

        #[test]
        fn body_parser_accepts_only_valid_ratings(v in json_value()) {
            let body = serde_json::to_vec(&v).unwrap();
            match parse_ratings_body(&body, &LIMITS, 5) {
                Ok(list) => {
                    prop_assert!(!list.is_empty() && list.len() <= LIMITS.max_batch);
                    for r in list {
                        prop_assert!(UserId::parse(r.user.as_str()).is_ok());
                        prop_assert!(ItemId::parse(r.item.as_str()).is_ok());
                        prop_assert!(LIMITS.scale.contains(r.value.get()));
                    }
                }
                Err(e) => prop_assert!(matches!(e.status_and_code().0.as_u16(), 400 | 413 | 422)),
            }
        }

        #[test]
        fn valid_batches_roundtrip(
            rows in proptest::collection::vec((VALID_ID, VALID_ID, 1.0f64..=5.0, proptest::option::of(any::<i64>())), 1..=8)
        ) {
            let batch: Vec<Value> = rows
                .iter()
                .map(|(u, i, r, t)| serde_json::json!({"user": u, "item": i, "rating": r, "timestamp": t}))
                .collect();
            let body = serde_json::to_vec(&serde_json::json!({ "ratings": batch })).unwrap();
            let got = parse_ratings_body(&body, &LIMITS, 99).unwrap();
            prop_assert_eq!(got.len(), rows.len());
            for (g, (u, i, r, t)) in got.iter().zip(&rows) {
                prop_assert_eq!(g.user.as_str(), nfc(u));
                prop_assert_eq!(g.item.as_str(), nfc(i));
                prop_assert_eq!(g.value.get(), *r as f32);
                prop_assert_eq!(g.timestamp, t.unwrap_or(99));
            }
        }
    }

    /// Ids the id rule accepts (after NFC normalisation): no Cc, Cf, marks or whitespace.
    const VALID_ID: &str = "[^\\p{Cc}\\p{Cf}\\p{M}\\s]{1,20}";

    fn nfc(s: &str) -> String {
        unicode_normalization::UnicodeNormalization::nfc(s).collect()
    }

    const LIMITS: BodyLimits = BodyLimits {
        max_batch: 8,
        scale: Scale { min: 1.0, max: 5.0 },
    };

    /// JSON values biased towards rating-shaped objects and batches.
    fn json_value() -> impl Strategy<Value = Value> {
        use serde_json::json;
        let id = prop_oneof![
            "[a-z]{0,3}".prop_map(Value::from),
            "\\PC{0,4}".prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(|f| json!(f)),
            Just(Value::Null),
            Just(json!(true)),
        ];
        let rating = prop_oneof![
            (-2.0f64..8.0).prop_map(|f| json!(f)),
            any::<f64>().prop_map(|f| json!(f)),
            any::<i64>().prop_map(Value::from),
            Just(json!("3")),
            Just(Value::Null),
        ];
        let field_sets = proptest::sample::subsequence(
            vec!["user", "item", "rating", "timestamp", "extra"],
            0..=5,
        );
        let one =
            (id.clone(), id, rating, any::<i64>(), field_sets).prop_map(|(u, i, r, t, keys)| {
                let mut m = serde_json::Map::new();
                for k in keys {
                    let v = match k {
                        "user" => u.clone(),
                        "item" => i.clone(),
                        "rating" => r.clone(),
                        "timestamp" => json!(t),
                        _ => json!(1),
                    };
                    m.insert(k.to_owned(), v);
                }
                Value::Object(m)
            });
        prop_oneof![
            one.clone(),
            proptest::collection::vec(one.clone(), 0..12).prop_map(|v| json!({ "ratings": v })),
            proptest::collection::vec(one, 0..3).prop_map(Value::from),
            Just(json!({"ratings": 1})),
            Just(json!(null)),
        ]
    }
}
