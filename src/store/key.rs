//! Store keys: which credential a stored state belongs to, named so that
//! two credentials never share one and one credential never has two.

use std::{
    fmt,
    hash::{Hash, Hasher},
};

use serde_json::{json, Map, Value};
use sha2::{Digest as _, Sha256};
use url::Url;

use crate::{Error, StoreErrorKind};

/// Names a credential in a [`TokenStore`](super::TokenStore): everything
/// that decides which token the server issues, and nothing secret.
///
/// Two caches share stored state exactly when their keys are equal. The key
/// names the flow, the client id, the token URL, the scopes, the audience,
/// the resource indicators (RFC 8707), the extra token request parameters
/// and a partition of your choice (one refresh token per end user, say).
/// It is canonical: scopes and resources are sets (order and repeats do not
/// matter), parameters are sorted, and the token URL is normalized, so
/// `HTTPS://Auth.Example.com:443/token` and `https://auth.example.com/token`
/// name one credential.
///
/// As text ([`as_str`](Self::as_str), used in file documents and Redis key
/// names):
///
/// ```text
/// client_credentials:my-app@https://auth.example.com/token#4c1f…(32 hex digits) api.read api.write
/// ```
///
/// - the flow and the client id, with `%`, `:`, `@`, `#`, whitespace and
///   control characters percent-encoded;
/// - the normalized token URL (scheme and host in lower case, no default
///   port, `/` for an empty path, percent-encoded unreserved characters
///   decoded, no empty query, no fragment, no user info);
/// - only when an audience, a resource, an extra parameter or a partition
///   is set: `#` and 128 bits of the SHA-256 digest of them all, since a
///   parameter value may be a secret;
/// - the scopes, sorted and space-separated.
///
/// A credential without audience, resources, parameters or partition,
/// whose scopes are given in sorted order, has the same key as in earlier
/// releases; see [`legacy`](Self::legacy) for the others.
///
/// `RefreshToken` and `AuthorizationCode` grants of one client share a key
/// (flow `refresh_token`): the code exchange of the first start and the
/// refreshes of every later start read and write the same state.
#[derive(Clone)]
pub struct StoreKey {
    text: String,
    legacy: Option<String>,
    flow: String,
    client_id: String,
    token_url: String,
    /// User info taken out of the token URL, kept for the digest only.
    userinfo: Option<String>,
    scopes: Vec<String>,
    audience: Option<String>,
    resources: Vec<String>,
    params: Vec<(String, String)>,
    partition: Option<String>,
}

impl StoreKey {
    /// The key of `flow` (`client_credentials`, `refresh_token`, or a name
    /// of your own) for `client_id` at `token_url`, with `scopes` (each may
    /// hold several, space-separated). For the other parts, use
    /// [`builder`](Self::builder).
    pub fn new(flow: &str, client_id: &str, token_url: &str, scopes: &[String]) -> Self {
        Self::builder(flow)
            .client_id(client_id)
            .token_url(token_url)
            .scopes(scopes)
            .build()
    }

    /// Starts a key of `flow`: a custom [`TokenSource`](crate::TokenSource)
    /// names its credential with it.
    ///
    /// ```
    /// use tower_oauth2::StoreKey;
    ///
    /// let key = StoreKey::builder("token_exchange")
    ///     .client_id("my-app")
    ///     .token_url("https://auth.example.com/token")
    ///     .scope("api.read")
    ///     .audience("https://api.example.com")
    ///     .partition("user-42")
    ///     .build();
    /// assert!(key.as_str().starts_with("token_exchange:my-app@https://auth.example.com/token#"));
    /// ```
    pub fn builder(flow: impl Into<String>) -> StoreKeyBuilder {
        StoreKeyBuilder {
            flow: flow.into(),
            client_id: String::new(),
            token_url: String::new(),
            scopes: Vec::new(),
            audience: None,
            resources: Vec::new(),
            params: Vec::new(),
            partition: None,
        }
    }

    /// The key as text, e.g.
    /// `refresh_token:my-app@https://auth.example.com/token api.read`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The key as releases before this format wrote it
    /// (`{flow}:{client_id}@{token_url} {scopes}`, each part as given), for
    /// a store to look there when nothing is stored under
    /// [`as_str`](Self::as_str): state saved before an upgrade is then still
    /// found, and the next save writes it under the new key. `None` with a
    /// partition, which earlier releases did not have.
    ///
    /// That format did not name the audience, resources or parameters: a
    /// state found through it keeps its refresh token, but its access token
    /// is served only when the key has none of them (it may have been
    /// issued for another audience).
    pub fn legacy(&self) -> Option<&str> {
        self.legacy.as_deref()
    }

    /// The flow, e.g. `client_credentials`.
    pub fn flow(&self) -> &str {
        &self.flow
    }

    /// The client id.
    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    /// The normalized token URL.
    pub fn token_url(&self) -> &str {
        &self.token_url
    }

    /// The scopes, sorted, each once.
    pub fn scopes(&self) -> &[String] {
        &self.scopes
    }

    /// The readable parts, for a stored document: a state found under
    /// another key can then say what differs. Parameters and partition
    /// only as digests.
    pub(crate) fn credential(&self) -> Value {
        json!({
            "flow": self.flow,
            "client_id": self.client_id,
            "token_url": self.token_url,
            "scopes": self.scopes,
            "audience": self.audience,
            "resources": self.resources,
            "params": (!self.params.is_empty()).then(|| digest(&json!(self.params), 8)),
            "partition": self.partition.as_ref().map(|p| digest(&json!(p), 8)),
        })
    }

    /// Whether a stored `document` (a [`TokenState`](super::TokenState)
    /// encoding) belongs to this credential: written under this key, or by
    /// an earlier release under the legacy key of the same credential. An
    /// `OtherCredential` error names what differs.
    pub(crate) fn recognise(&self, document: &Map<String, Value>) -> Result<Recognised, Error> {
        let stored = document.get("key").and_then(Value::as_str);
        if stored == Some(self.text.as_str()) {
            return Ok(Recognised { access: true });
        }
        // A document that names its credential was written under a
        // complete key: it is never an earlier release's.
        if !document.contains_key("credential") && stored.is_some_and(|s| self.is_legacy(s)) {
            let complete =
                self.audience.is_none() && self.resources.is_empty() && self.params.is_empty();
            return Ok(Recognised { access: complete });
        }
        Err(Error::store(
            StoreErrorKind::OtherCredential,
            self.differences(document),
        ))
    }

    /// Whether `stored`, a key in the earlier format, names this credential
    /// (its scopes in any order, its token URL spelled in any way).
    fn is_legacy(&self, stored: &str) -> bool {
        if self.partition.is_some() {
            return false;
        }
        let Some(old) = Legacy::parse(stored, Some((&self.flow, &self.client_id))) else {
            return false;
        };
        let (url, userinfo) = normalize_url(old.token_url);
        url == self.token_url && userinfo == self.userinfo && old.scopes == self.scopes
    }

    /// What differs between this key and the one `document` was stored
    /// under, as an error message without secrets.
    fn differences(&self, document: &Map<String, Value>) -> String {
        let mut differ = Vec::new();
        let mut compare = |what: &str, stored: Value, mine: Value| {
            if stored != mine {
                differ.push(format!(
                    "{what} (stored {}, this cache {})",
                    show(&stored),
                    show(&mine)
                ));
            }
        };
        if let Some(stored) = document.get("credential").and_then(Value::as_object) {
            let mine = self.credential();
            let part =
                |name: &str, of: &Map<String, Value>| of.get(name).cloned().unwrap_or_default();
            let mine = mine.as_object().cloned().unwrap_or_default();
            for (name, what) in [
                ("flow", "flow"),
                ("client_id", "client id"),
                ("token_url", "token URL"),
                ("scopes", "scopes"),
                ("audience", "audience"),
                ("resources", "resources"),
            ] {
                compare(what, part(name, stored), part(name, &mine));
            }
            for (name, what) in [("params", "extra parameters"), ("partition", "partition")] {
                if part(name, stored) != part(name, &mine) {
                    differ.push(what.to_owned());
                }
            }
        } else if let Some(old) = document
            .get("key")
            .and_then(Value::as_str)
            .and_then(|key| Legacy::parse(key, None))
        {
            // Written by an earlier release: its key names only these.
            compare("flow", json!(old.flow), json!(self.flow));
            compare("client id", json!(old.client_id), json!(self.client_id));
            compare(
                "token URL",
                json!(normalize_url(old.token_url).0),
                json!(self.token_url),
            );
            compare("scopes", json!(old.scopes), json!(self.scopes));
            if differ.is_empty() && self.partition.is_some() {
                differ.push("partition (stored without one)".to_owned());
            }
        }
        if differ.is_empty() {
            return "the stored token state belongs to another credential (its store key differs)"
                .to_owned();
        }
        format!(
            "the stored token state belongs to another credential; what differs: {}",
            differ.join("; ")
        )
    }
}

/// What [`StoreKey::recognise`] found.
pub(crate) struct Recognised {
    /// The stored access token may be served: the document names the
    /// credential completely.
    pub(crate) access: bool,
}

/// A key of the earlier format, taken apart.
struct Legacy<'a> {
    flow: &'a str,
    client_id: &'a str,
    token_url: &'a str,
    scopes: Vec<String>,
}

impl<'a> Legacy<'a> {
    /// `key` split into its parts. With `known` (flow and client id), the
    /// key must start with them; without, a client id is taken to end at
    /// the last `@` before the token URL (best effort: that format is
    /// ambiguous).
    fn parse(key: &'a str, known: Option<(&str, &str)>) -> Option<Self> {
        let (flow, client_id, rest) = match known {
            Some((flow, client_id)) => {
                let rest = key
                    .strip_prefix(flow)?
                    .strip_prefix(':')?
                    .strip_prefix(client_id)?
                    .strip_prefix('@')?;
                (
                    &key[..flow.len()],
                    &key[flow.len() + 1..][..client_id.len()],
                    rest,
                )
            }
            None => {
                let (flow, rest) = key.split_once(':')?;
                let head = rest.split_once(' ').map_or(rest, |(head, _)| head);
                let (client_id, _) = head.rsplit_once('@')?;
                (flow, client_id, &rest[client_id.len() + 1..])
            }
        };
        let (token_url, scopes) = rest.split_once(' ').unwrap_or((rest, ""));
        Some(Self {
            flow,
            client_id,
            token_url,
            scopes: canonical_scopes([scopes]),
        })
    }
}

impl PartialEq for StoreKey {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for StoreKey {}

impl Hash for StoreKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.text.hash(state);
    }
}

impl fmt::Display for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Shows the key's text only: parameter values stay out of logs.
impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("StoreKey").field(&self.text).finish()
    }
}

/// Builds a [`StoreKey`]. Made by [`StoreKey::builder`].
#[derive(Clone)]
pub struct StoreKeyBuilder {
    flow: String,
    client_id: String,
    token_url: String,
    /// As given: the legacy key joins them unchanged.
    scopes: Vec<String>,
    audience: Option<String>,
    resources: Vec<String>,
    params: Vec<(String, String)>,
    partition: Option<String>,
}

impl fmt::Debug for StoreKeyBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreKeyBuilder")
            .field("flow", &self.flow)
            .field("client_id", &self.client_id)
            .field("token_url", &self.token_url)
            .finish_non_exhaustive()
    }
}

impl StoreKeyBuilder {
    /// The client id.
    pub fn client_id(mut self, client_id: impl Into<String>) -> Self {
        self.client_id = client_id.into();
        self
    }

    /// The token URL (normalized by [`build`](Self::build)).
    pub fn token_url(mut self, token_url: impl Into<String>) -> Self {
        self.token_url = token_url.into();
        self
    }

    /// Adds scopes from a space-separated string.
    pub fn scope(mut self, scope: impl Into<String>) -> Self {
        self.scopes.push(scope.into());
        self
    }

    /// Adds each scope in turn (each may itself hold several, space-separated).
    pub fn scopes<I, T>(mut self, scopes: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: AsRef<str>,
    {
        self.scopes
            .extend(scopes.into_iter().map(|s| s.as_ref().to_owned()));
        self
    }

    /// Sets the `audience` the tokens are requested for.
    pub fn audience(mut self, audience: impl Into<String>) -> Self {
        self.audience = Some(audience.into());
        self
    }

    /// Adds a resource indicator (RFC 8707); may be called several times.
    pub fn resource(mut self, resource: impl Into<String>) -> Self {
        self.resources.push(resource.into());
        self
    }

    /// Adds an extra parameter of the token requests. Its value goes into
    /// the key only as part of a digest.
    pub fn param(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.params.push((name.into(), value.into()));
        self
    }

    /// Keeps this credential's state apart from the same credential's for
    /// another partition: one end user's refresh token from another's. It
    /// goes into the key only as part of a digest.
    pub fn partition(mut self, partition: impl Into<String>) -> Self {
        self.partition = Some(partition.into());
        self
    }

    /// The key.
    pub fn build(self) -> StoreKey {
        let scopes = canonical_scopes(&self.scopes);
        let mut resources = self.resources;
        resources.sort();
        resources.dedup();
        let mut params = self.params;
        params.sort();
        let (token_url, userinfo) = normalize_url(&self.token_url);

        let mut hidden = Vec::new();
        if let Some(userinfo) = &userinfo {
            hidden.push(json!(["userinfo", userinfo]));
        }
        if let Some(audience) = &self.audience {
            hidden.push(json!(["audience", audience]));
        }
        hidden.extend(resources.iter().map(|r| json!(["resource", r])));
        hidden.extend(params.iter().map(|(n, v)| json!(["param", n, v])));
        if let Some(partition) = &self.partition {
            hidden.push(json!(["partition", partition]));
        }

        let mut text = format!(
            "{}:{}@{token_url}",
            escape(&self.flow),
            escape(&self.client_id)
        );
        if !hidden.is_empty() {
            text.push('#');
            text.push_str(&digest(&Value::Array(hidden), 16));
        }
        if !scopes.is_empty() {
            text.push(' ');
            text.push_str(&scopes.join(" "));
        }

        // Exactly what earlier releases wrote.
        let legacy = self.partition.is_none().then(|| {
            let mut legacy = format!("{}:{}@{}", self.flow, self.client_id, self.token_url);
            if !self.scopes.is_empty() {
                legacy.push(' ');
                legacy.push_str(&self.scopes.join(" "));
            }
            legacy
        });

        StoreKey {
            text,
            legacy,
            flow: self.flow,
            client_id: self.client_id,
            token_url,
            userinfo,
            scopes,
            audience: self.audience,
            resources,
            params,
            partition: self.partition,
        }
    }
}

/// Scopes as a set: split on whitespace, sorted, each once.
fn canonical_scopes<I: IntoIterator<Item = T>, T: AsRef<str>>(raw: I) -> Vec<String> {
    let mut scopes: Vec<String> = Vec::new();
    for item in raw {
        scopes.extend(item.as_ref().split_whitespace().map(str::to_owned));
    }
    scopes.sort();
    scopes.dedup();
    scopes
}

/// The token URL as one spelling, and its user info apart. Text that is not
/// a URL stays as it is, with the characters that end the URL in a key
/// escaped.
fn normalize_url(raw: &str) -> (String, Option<String>) {
    let Ok(mut url) = Url::parse(raw) else {
        return (raw.replace(' ', "%20").replace('#', "%23"), None);
    };
    let userinfo = (!url.username().is_empty() || url.password().is_some())
        .then(|| format!("{}:{}", url.username(), url.password().unwrap_or_default()));
    // Fails only for URLs that cannot carry user info, which have none.
    let _ = url.set_username("");
    let _ = url.set_password(None);
    url.set_fragment(None);
    match url.query().map(normalize_percent) {
        Some(query) if query.is_empty() => url.set_query(None),
        Some(query) => url.set_query(Some(&query)),
        None => {}
    }
    let path = normalize_percent(url.path());
    if path != url.path() {
        url.set_path(&path);
    }
    (url.into(), userinfo)
}

/// Percent-encoding in one spelling (RFC 3986 §6.2.2.2): unreserved
/// characters decoded, the other escapes in upper case.
fn normalize_percent(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = bytes
            .get(i + 1..i + 3)
            .filter(|hex| bytes[i] == b'%' && hex.iter().all(u8::is_ascii_hexdigit));
        match escape {
            Some(hex) => {
                let hex = std::str::from_utf8(hex).unwrap_or_default();
                let byte = u8::from_str_radix(hex, 16).unwrap_or_default();
                if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
                    out.push(byte);
                } else {
                    out.push(b'%');
                    out.extend(hex.to_ascii_uppercase().bytes());
                }
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// Percent-encodes what would make the key ambiguous or hard to read.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '%' | ':' | '@' | '#') || c.is_whitespace() || c.is_control() {
            let mut buffer = [0; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                out.push_str(&format!("%{byte:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The first `bytes` bytes of the SHA-256 digest of `value`'s JSON text, in
/// hex.
fn digest(value: &Value, bytes: usize) -> String {
    Sha256::digest(value.to_string().as_bytes())
        .iter()
        .take(bytes)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A value for an error message: text without quotes, nothing as `none`.
fn show(value: &Value) -> String {
    match value {
        Value::Null => "none".to_owned(),
        Value::String(s) => format!("`{s}`"),
        Value::Array(items) if items.is_empty() => "none".to_owned(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(show).collect();
            items.join(" ")
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> StoreKeyBuilder {
        StoreKey::builder("client_credentials")
            .client_id("app")
            .token_url("https://auth.example.com/token")
            .scope("b a")
    }

    #[test]
    fn plain_keys_keep_the_earlier_format() {
        let key = StoreKey::new(
            "refresh_token",
            "app",
            "https://a.example/token",
            &["x".into()],
        );
        assert_eq!(key.as_str(), "refresh_token:app@https://a.example/token x");
        assert_eq!(key.legacy(), Some(key.as_str()));
        let custom = StoreKey::new("custom", "", "", &[]);
        assert_eq!(custom.as_str(), "custom:@");
    }

    #[test]
    fn every_part_names_another_credential() {
        let keys = [
            base().build(),
            base().audience("https://api-1.example").build(),
            base().audience("https://api-2.example").build(),
            base().resource("https://api-1.example").build(),
            base().resource("https://api-2.example").build(),
            base().param("tenant", "a").build(),
            base().param("tenant", "b").build(),
            base().param("tenant_b", "").build(),
            base().partition("user-1").build(),
            base().partition("user-2").build(),
            base().scope("c").build(),
            base().client_id("app2").build(),
            base().token_url("https://auth.example.com/token2").build(),
            StoreKey::builder("refresh_token")
                .client_id("app")
                .token_url("https://auth.example.com/token")
                .scope("a b")
                .build(),
        ];
        let texts: std::collections::HashSet<&str> = keys.iter().map(StoreKey::as_str).collect();
        assert_eq!(texts.len(), keys.len(), "{texts:#?}");
        // Audience, resource and parameter are told apart even with one value.
        assert_ne!(base().audience("x").build(), base().resource("x").build());
    }

    #[test]
    fn one_credential_has_one_key() {
        let key = base()
            .resource("https://r1.example")
            .resource("https://r2.example")
            .param("x", "1")
            .param("y", "2")
            .build();
        let same = StoreKey::builder("client_credentials")
            .client_id("app")
            .token_url("HTTPS://Auth.Example.COM:443/token#fragment")
            .scopes(["a", "b", "a"])
            .resource("https://r2.example")
            .resource("https://r1.example")
            .resource("https://r1.example")
            .param("y", "2")
            .param("x", "1")
            .build();
        assert_eq!(key, same);
        assert_eq!(key.as_str(), same.as_str());
        for spelling in [
            "https://auth.example.com",
            "https://auth.example.com:443",
            "HTTPS://AUTH.EXAMPLE.COM/",
            "https://auth.example.com/?",
            "https://auth.example.com/./",
        ] {
            assert_eq!(
                StoreKey::new("f", "c", spelling, &[]).token_url(),
                "https://auth.example.com/",
                "{spelling}"
            );
        }
        assert_eq!(
            StoreKey::new("f", "c", "https://h.example/%7euser/a%2fb?q=%7e", &[]).token_url(),
            "https://h.example/~user/a%2Fb?q=~"
        );
        // A port other than the default is another server.
        assert_ne!(
            StoreKey::new("f", "c", "https://h.example:8443/t", &[]),
            StoreKey::new("f", "c", "https://h.example/t", &[])
        );
    }

    #[test]
    fn keys_hold_no_secret() {
        let key = base()
            .param("client_assertion_extra", "SENTINEL-PARAM")
            .partition("SENTINEL-USER")
            .token_url("https://user:SENTINEL-PASSWORD@auth.example.com/token")
            .build();
        for text in [
            key.as_str().to_owned(),
            format!("{key:?}"),
            key.to_string(),
            key.credential().to_string(),
            key.legacy().unwrap_or_default().to_owned(),
        ] {
            assert!(!text.contains("SENTINEL-PARAM"), "{text}");
            assert!(!text.contains("SENTINEL-USER"), "{text}");
        }
        assert!(!key.as_str().contains("SENTINEL-PASSWORD"));
        assert!(!format!("{:?}", base().param("p", "SENTINEL")).contains("SENTINEL"));
    }

    #[test]
    fn separators_are_escaped() {
        // One text for both in the earlier format.
        let a = StoreKey::new("f", "a@b", "c", &[]);
        let b = StoreKey::new("f", "a", "b@c", &[]);
        assert_eq!(a.legacy(), b.legacy());
        assert_ne!(a, b);
        assert_eq!(
            StoreKey::new("my:flow", "svc@tenant 1", "https://h.example/t", &[]).as_str(),
            "my%3Aflow:svc%40tenant%201@https://h.example/t"
        );
    }

    #[test]
    fn legacy_is_the_earlier_text() {
        let key = StoreKey::new(
            "client_credentials",
            "svc@tenant",
            "https://auth.example.com/oauth/token",
            &["write".into(), "read".into()],
        );
        assert_eq!(
            key.legacy(),
            Some("client_credentials:svc@tenant@https://auth.example.com/oauth/token write read")
        );
        assert_eq!(base().partition("u").build().legacy(), None);
    }

    fn document(key: &str, credential: Option<Value>) -> Map<String, Value> {
        let mut document = Map::new();
        document.insert("key".into(), json!(key));
        if let Some(credential) = credential {
            document.insert("credential".into(), credential);
        }
        document
    }

    #[test]
    fn earlier_documents_are_recognised() {
        let key = base().build();
        // Scopes in another order, the URL spelled otherwise.
        let old = "client_credentials:app@HTTPS://auth.example.com:443/token b a";
        assert!(key.recognise(&document(old, None)).unwrap().access);
        // The earlier key did not name the audience: refresh token only.
        let with_audience = base().audience("https://api.example").build();
        assert!(
            !with_audience
                .recognise(&document(old, None))
                .unwrap()
                .access
        );
        // Never a partition's, never for a document that names its credential.
        assert!(base()
            .partition("u")
            .build()
            .recognise(&document(old, None))
            .is_err());
        let other = base().audience("https://other.example").build();
        assert!(with_audience
            .recognise(&document(old, Some(other.credential())))
            .is_err());
    }

    #[test]
    fn other_credential_says_what_differs() {
        let key = base()
            .audience("https://api-1.example")
            .param("p", "SENTINEL")
            .build();
        let message = |stored: &StoreKey| {
            key.recognise(&document(stored.as_str(), Some(stored.credential())))
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default()
        };
        let other = base()
            .audience("https://api-2.example")
            .param("p", "SENTINEL")
            .build();
        let text = message(&other);
        assert!(text.ends_with("what differs: audience (stored `https://api-2.example`, this cache `https://api-1.example`)"), "{text}");
        let other = base()
            .audience("https://api-1.example")
            .param("p", "other")
            .build();
        let text = message(&other);
        assert!(text.ends_with("what differs: extra parameters"), "{text}");
        assert!(
            !text.contains("SENTINEL") && !text.contains("`other`"),
            "{text}"
        );
        let other = StoreKey::builder("client_credentials")
            .client_id("app2")
            .token_url("https://auth.example.com/token")
            .scope("a")
            .audience("https://api-1.example")
            .param("p", "SENTINEL")
            .partition("u")
            .build();
        let text = message(&other);
        assert!(
            text.contains("client id (stored `app2`, this cache `app`)"),
            "{text}"
        );
        assert!(
            text.contains("scopes (stored `a`, this cache `a` `b`)"),
            "{text}"
        );
        assert!(text.contains("partition"), "{text}");
        assert!(!text.contains("audience"), "{text}");
        // An earlier release's document: read from its key.
        let old = document(
            "client_credentials:svc@x@https://auth.example.com/token a b",
            None,
        );
        let text = key
            .recognise(&old)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            text.contains("client id (stored `svc@x`, this cache `app`)"),
            "{text}"
        );
        assert!(
            !text.contains("token URL") && !text.contains("scopes"),
            "{text}"
        );
    }
}
