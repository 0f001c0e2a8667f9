//! Values that must never reach a log line, an error or an endpoint.
//!
//! Both types serialize and debug-print redacted, so the configuration can be
//! printed (`actorbot config`, `GET /config`) as it is; the real value is only
//! reachable through `expose()`, which makes every use visible in review.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The placeholder that replaces a secret in any output.
pub const REDACTED: &str = "<redacted>";

/// A secret string (tokens, shared secrets). Empty means "not set".
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether `presented` is this secret, compared in constant time so
    /// that the time an answer takes tells nothing about the secret.
    pub fn matches(&self, presented: &[u8]) -> bool {
        use subtle::ConstantTimeEq;
        self.0.as_bytes().ct_eq(presented).into()
    }

    fn shown(&self) -> &str {
        if self.0.is_empty() { "" } else { REDACTED }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.shown())
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.shown())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// A connection URL whose password is secret but whose host is worth showing.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    pub fn new(value: impl Into<String>) -> SecretUrl {
        SecretUrl(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The URL with its password replaced: the one in the user-info part
    /// (everything up to the last `@`, so that a password holding `/` or
    /// `@` is covered), and `password=` in the query string.
    pub fn redacted(&self) -> String {
        let Some((scheme, rest)) = self.0.split_once("://") else {
            return self.0.clone();
        };
        let (base, query) = match rest.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (rest, None),
        };
        let mut out = format!("{scheme}://");
        match base.rsplit_once('@') {
            Some((userinfo, host)) => {
                match userinfo.split_once(':') {
                    Some((user, _)) => out.push_str(&format!("{user}:{REDACTED}@")),
                    None => out.push_str(&format!("{userinfo}@")),
                }
                out.push_str(host);
            }
            None => out.push_str(base),
        }
        if let Some(query) = query {
            let pairs: Vec<String> = query
                .split('&')
                .map(|pair| match pair.split_once('=') {
                    Some((key, _)) if key.to_ascii_lowercase().contains("pass") => {
                        format!("{key}={REDACTED}")
                    }
                    _ => pair.to_string(),
                })
                .collect();
            out.push('?');
            out.push_str(&pairs.join("&"));
        }
        out
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl Serialize for SecretUrl {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.redacted())
    }
}

impl<'de> Deserialize<'de> for SecretUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(SecretUrl)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_matches_itself_only() {
        let secret = Secret::new("abc");
        assert!(secret.matches(b"abc"));
        assert!(!secret.matches(b"abd"));
        assert!(!secret.matches(b"abcd"));
        assert!(!secret.matches(b"ab"));
        assert!(!Secret::new("").matches(b"a"));
    }

    #[test]
    fn passwords_with_slashes_and_in_queries_are_hidden() {
        let url = SecretUrl::new(
            "postgres://bot:pa/ss@w0rd@db:5432/actorbot?sslmode=disable&password=QSECRET",
        );
        let shown = url.redacted();
        assert!(
            !shown.contains("pa/ss") && !shown.contains("w0rd") && !shown.contains("QSECRET"),
            "{shown}"
        );
        assert!(
            shown.starts_with("postgres://bot:<redacted>@db:5432/actorbot?sslmode=disable"),
            "{shown}"
        );
        assert_eq!(
            SecretUrl::new("redis://127.0.0.1:6379").redacted(),
            "redis://127.0.0.1:6379"
        );
    }

    #[test]
    fn url_password_is_hidden_and_host_kept() {
        let url = SecretUrl::new("postgres://bot:s3cret@db.internal:5432/actorbot");
        assert_eq!(
            url.redacted(),
            "postgres://bot:<redacted>@db.internal:5432/actorbot"
        );
        assert_eq!(
            SecretUrl::new("redis://127.0.0.1:6379").redacted(),
            "redis://127.0.0.1:6379"
        );
        assert_eq!(
            SecretUrl::new("postgres://user@host/db").redacted(),
            "postgres://user@host/db"
        );
    }

    #[test]
    fn secret_never_prints() {
        let secret = Secret::new("123:abc");
        assert_eq!(format!("{secret:?}"), "\"<redacted>\"");
        assert_eq!(serde_json::to_string(&secret).unwrap(), "\"<redacted>\"");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }
}
