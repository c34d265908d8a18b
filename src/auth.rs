//! API keys and roles: parsing `role:key` specs, storing only their SHA-256 digests,
//! and constant-time lookup of a presented bearer token.
//!
//! Roles are ordered: `admin` implies `write`, which implies `read`.

use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};
use std::fmt;
use subtle::ConstantTimeEq;

/// What a key may do. `Ord`: `Read < Write < Admin`; a key may call an endpoint
/// when its role is at least the endpoint's. Written in lowercase (`Display`, `FromStr`,
/// serde).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
#[derive(strum::Display, strum::EnumString, strum::VariantNames)]
#[strum(serialize_all = "lowercase")]
pub enum Role {
    /// GET endpoints: ratings lists, predictions, recommendations, similar items.
    Read,
    /// Also POST /v1/ratings and DELETE of a rating.
    Write,
    /// Also GET /v1/model and POST /v1/model/train.
    Admin,
}

impl Role {
    /// Parses a role name; the error lists the accepted ones.
    pub fn parse(s: &str) -> Result<Role, String> {
        s.parse().map_err(|_| {
            let names = <Role as strum::VariantNames>::VARIANTS;
            let (last, rest) = names.split_last().expect("Role has variants");
            format!(
                "unknown role `{s}` (expected {} or {last})",
                rest.join(", ")
            )
        })
    }
}

/// Shortest accepted key: shorter ones are guessable.
pub const MIN_KEY_LEN: usize = 16;
/// Longest accepted key.
pub const MAX_KEY_LEN: usize = 256;

/// One configured key: its role and the SHA-256 digest of the key. The key
/// itself is not kept, so neither `Debug` nor `Serialize` can reveal it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySpec {
    pub role: Role,
    digest: [u8; 32],
}

impl fmt::Debug for KeySpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeySpec({}:<redacted>)", self.role)
    }
}

fn digest(token: &[u8]) -> [u8; 32] {
    Sha256::digest(token).into()
}

/// RFC 6750 `b64token` characters: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then "="*.
fn is_b64token(key: &str) -> bool {
    let body = key.trim_end_matches('=');
    !body.is_empty()
        && body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
}

impl KeySpec {
    /// Parses `role:key`. The error never contains the key.
    pub fn parse(spec: &str) -> Result<KeySpec, String> {
        let spec = spec.trim();
        let Some((role, key)) = spec.split_once(':') else {
            return Err(
                "an API key must be written `role:key` (role = read, write or admin)".into(),
            );
        };
        let role = Role::parse(role.trim())?;
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(format!(
                "the {role} key has {} characters; keys need {MIN_KEY_LEN} to {MAX_KEY_LEN}",
                key.len()
            ));
        }
        if !is_b64token(key) {
            return Err(format!(
                "the {role} key has characters outside A-Z a-z 0-9 - . _ ~ + / (and trailing =)"
            ));
        }
        Ok(KeySpec {
            role,
            digest: digest(key.as_bytes()),
        })
    }
}

/// The configured keys. Deserialises from a list of `role:key` strings (TOML) or
/// one string of them separated by commas or whitespace (an environment variable).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ApiKeys(Vec<KeySpec>);

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.0.iter()).finish()
    }
}

impl ApiKeys {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Parses a list of specs (blank entries and `#` comments are skipped).
    pub fn parse_all<'a>(specs: impl IntoIterator<Item = &'a str>) -> Result<ApiKeys, String> {
        let mut keys = ApiKeys::default();
        for (i, s) in specs.into_iter().enumerate() {
            let s = s.trim();
            if s.is_empty() || s.starts_with('#') {
                continue;
            }
            keys.push(KeySpec::parse(s).map_err(|e| format!("key #{}: {e}", i + 1))?)?;
        }
        Ok(keys)
    }

    /// Parses the content of a keys file: one `role:key` per line, `#` comments.
    pub fn parse_file_content(text: &str) -> Result<ApiKeys, String> {
        let mut keys = ApiKeys::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            keys.push(KeySpec::parse(line).map_err(|e| format!("line {}: {e}", n + 1))?)?;
        }
        Ok(keys)
    }

    /// Adds a key; the same key twice is refused (its two roles would be ambiguous).
    pub fn push(&mut self, k: KeySpec) -> Result<(), String> {
        if self.0.iter().any(|o| o.digest == k.digest) {
            return Err("the same API key is configured twice".into());
        }
        self.0.push(k);
        Ok(())
    }

    pub fn extend(&mut self, other: ApiKeys) -> Result<(), String> {
        for k in other.0 {
            self.push(k)?;
        }
        Ok(())
    }

    /// The role of a presented token, or None. Compares the token's digest with
    /// every configured digest in constant time, without stopping at a match.
    pub fn role_of(&self, token: &str) -> Option<Role> {
        let d = digest(token.as_bytes());
        let mut found = None;
        for k in &self.0 {
            if bool::from(k.digest.ct_eq(&d)) {
                found = Some(k.role);
            }
        }
        found
    }

    /// How many keys of each role (for the startup log line).
    pub fn summary(&self) -> String {
        let count = |r| self.0.iter().filter(|k| k.role == r).count();
        format!(
            "{} admin, {} write, {} read",
            count(Role::Admin),
            count(Role::Write),
            count(Role::Read)
        )
    }
}

impl Serialize for ApiKeys {
    /// Keys serialise as `role:<redacted>`: configuration dumps never carry secrets.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|k| format!("{}:<redacted>", k.role)))
    }
}

impl<'de> Deserialize<'de> for ApiKeys {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ApiKeys;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str(
                    "a list of \"role:key\" strings, or one string of them separated by commas",
                )
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ApiKeys, E> {
                ApiKeys::parse_all(v.split(|c: char| c == ',' || c.is_whitespace()))
                    .map_err(E::custom)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ApiKeys, A::Error> {
                let mut specs = Vec::new();
                while let Some(s) = seq.next_element::<String>()? {
                    specs.push(s);
                }
                ApiKeys::parse_all(specs.iter().map(String::as_str)).map_err(de::Error::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "admin-key-0123456789";
    const R: &str = "read-key-0123456789abc";

    #[test]
    fn roles_are_ordered() {
        assert!(Role::Admin > Role::Write && Role::Write > Role::Read);
        assert_eq!(Role::parse("write"), Ok(Role::Write));
        assert_eq!(Role::Admin.to_string(), "admin");
        assert_eq!(
            Role::parse("root").unwrap_err(),
            "unknown role `root` (expected read, write or admin)"
        );
        assert!(Role::parse("Admin").is_err(), "names are lowercase only");
        assert_eq!(serde_json::to_value(Role::Read).unwrap(), "read");
    }

    #[test]
    fn lookup_by_token() {
        let keys =
            ApiKeys::parse_all([format!("admin:{A}").as_str(), &format!("read:{R}")]).unwrap();
        assert_eq!(keys.role_of(A), Some(Role::Admin));
        assert_eq!(keys.role_of(R), Some(Role::Read));
        assert_eq!(keys.role_of("admin-key-012345678"), None);
        assert_eq!(keys.role_of(""), None);
        assert_eq!(keys.summary(), "1 admin, 0 write, 1 read");
    }

    #[test]
    fn bad_specs_are_refused_without_echoing_the_key() {
        for bad in [
            "admin",
            "root:0123456789abcdef0",
            "read:short",
            "read:has space inside 0123456789",
            "read:ünïcode-0123456789abc",
        ] {
            let e = KeySpec::parse(bad).unwrap_err();
            assert!(!e.contains("0123456789"), "{e}");
        }
        let dup = ApiKeys::parse_all([format!("admin:{A}").as_str(), &format!("read:{A}")]);
        assert!(dup.is_err());
    }

    #[test]
    fn debug_and_serialize_redact() {
        let keys = ApiKeys::parse_all([format!("admin:{A}").as_str()]).unwrap();
        let dbg = format!("{keys:?}");
        assert!(!dbg.contains(A), "{dbg}");
        assert!(dbg.contains("admin"));
        let json = serde_json::to_string(&keys).unwrap();
        assert_eq!(json, r#"["admin:<redacted>"]"#);
    }

    #[test]
    fn file_content_and_env_string() {
        let keys = ApiKeys::parse_file_content(&format!("# comment\n\nadmin:{A}\n  read:{R}  \n"))
            .unwrap();
        assert_eq!(keys.len(), 2);
        let e = ApiKeys::parse_file_content("read:x\n").unwrap_err();
        assert!(e.starts_with("line 1"), "{e}");
        let v: ApiKeys =
            serde_json::from_value(serde_json::json!(format!("admin:{A}, read:{R}"))).unwrap();
        assert_eq!(v.role_of(R), Some(Role::Read));
    }
}
