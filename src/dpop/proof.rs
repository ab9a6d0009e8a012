//! Making one DPoP proof (RFC 9449 §4.2): the claims, then one signature.
//!
//! Everything that stays the same for a key (the encoded header) or for a
//! token (`ath`) is made once, elsewhere; per proof: a random `jti`, the
//! clock, the claims, their base64url, and the signature.

use std::time::UNIX_EPOCH;

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use bytes::Bytes;
use http::HeaderValue;

use super::{DpopKey, Signer};
use crate::{clock, Error};

/// Where a request goes, as a proof names it: `htu` is the URI without
/// query and fragment (RFC 9449 §4.2), and its first `origin_len` bytes are
/// the origin (`scheme://authority`) nonces are remembered under.
/// (`pub` in a private module: it appears in the sealed request trait.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Htu {
    pub(crate) htu: String,
    pub(crate) origin_len: usize,
}

impl Htu {
    /// `scheme://authority`.
    pub(crate) fn origin(&self) -> &str {
        &self.htu[..self.origin_len]
    }

    /// From an `http::Uri`; `None` for a URI without scheme or authority
    /// (a path alone names no origin to prove anything to).
    pub(crate) fn of_uri(uri: &http::Uri) -> Option<Self> {
        let scheme = uri.scheme_str()?;
        let authority = uri.authority()?.as_str();
        // Userinfo is never part of what a server compares.
        let authority = authority.rsplit('@').next().unwrap_or(authority);
        let path = uri.path();
        let mut htu = String::with_capacity(scheme.len() + 3 + authority.len() + path.len());
        for c in scheme.chars() {
            htu.push(c.to_ascii_lowercase());
        }
        htu.push_str("://");
        for c in authority.chars() {
            htu.push(c.to_ascii_lowercase());
        }
        let origin_len = htu.len();
        htu.push_str(if path.is_empty() { "/" } else { path });
        Some(Self { htu, origin_len })
    }

    /// From a URI that is a path only, sent to `origin` (`scheme://host[:port]`).
    pub(crate) fn of_relative(origin: &str, uri: &http::Uri) -> Option<Self> {
        if uri.scheme().is_some() || uri.authority().is_some() {
            return None;
        }
        let path = uri.path();
        let mut htu = String::with_capacity(origin.len() + path.len());
        htu.push_str(origin);
        let origin_len = htu.len();
        htu.push_str(if path.is_empty() { "/" } else { path });
        Some(Self { htu, origin_len })
    }

    /// From a `url::Url` (already normalised by its parser).
    pub(crate) fn of_url(url: &url::Url) -> Option<Self> {
        if url.cannot_be_a_base() || url.host_str().is_none() {
            return None;
        }
        // No userinfo: the url crate keeps it between scheme and host.
        let host_and_port = &url[url::Position::BeforeHost..url::Position::BeforePath];
        let path = &url[url::Position::BeforePath..url::Position::AfterPath];
        let mut out =
            String::with_capacity(url.scheme().len() + 3 + host_and_port.len() + path.len());
        out.push_str(url.scheme());
        out.push_str("://");
        out.push_str(host_and_port);
        let origin_len = out.len();
        out.push_str(path);
        Some(Self {
            htu: out,
            origin_len,
        })
    }
}

/// Appends `text` as a JSON string.
fn push_json_str(out: &mut String, text: &str) {
    if text
        .bytes()
        .all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\')
    {
        out.push('"');
        out.push_str(text);
        out.push('"');
    } else {
        out.push_str(&serde_json::Value::from(text).to_string());
    }
}

impl DpopKey {
    /// A proof for a request with method `htm` to `htu`, carrying `ath` (the
    /// access token's hash, for resource requests) and the origin's nonce.
    pub(crate) fn proof(
        &self,
        htm: &str,
        htu: &str,
        ath: Option<&str>,
        nonce: Option<&str>,
    ) -> Result<HeaderValue, Error> {
        let iat = clock::wall_now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let mut claims = String::with_capacity(
            64 + htm.len() + htu.len() + ath.map_or(0, str::len) + nonce.map_or(0, str::len),
        );
        claims.push_str("{\"jti\":\"");
        URL_SAFE_NO_PAD.encode_string(rand::random::<[u8; 16]>(), &mut claims);
        claims.push_str("\",\"htm\":");
        push_json_str(&mut claims, htm);
        claims.push_str(",\"htu\":");
        push_json_str(&mut claims, htu);
        claims.push_str(",\"iat\":");
        claims.push_str(itoa(iat, &mut [0u8; 20]));
        if let Some(ath) = ath {
            claims.push_str(",\"ath\":\"");
            claims.push_str(ath);
            claims.push('"');
        }
        if let Some(nonce) = nonce {
            claims.push_str(",\"nonce\":");
            push_json_str(&mut claims, nonce);
        }
        claims.push('}');

        let inner = &*self.inner;
        let mut jws =
            String::with_capacity(inner.header.len() + 2 + claims.len() * 4 / 3 + 4 + 700);
        jws.push_str(&inner.header);
        jws.push('.');
        URL_SAFE_NO_PAD.encode_string(claims.as_bytes(), &mut jws);
        let failed = || Error::client_assertion("signing the DPoP proof failed", None, false);
        match &inner.signer {
            Signer::Key(key) => {
                let signature = key.sign_input(jws.as_bytes()).ok_or_else(failed)?;
                jws.push('.');
                URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut jws);
            }
            Signer::Custom(signer) => {
                let signature = signer.sign(jws.as_bytes()).map_err(|e| {
                    Error::client_assertion("signing the DPoP proof failed", Some(e), true)
                })?;
                jws.push('.');
                URL_SAFE_NO_PAD.encode_string(signature, &mut jws);
            }
        }
        // Base64url and dots only: always a valid header value. Sensitive:
        // kept out of logs like the token it goes with.
        let mut value = HeaderValue::from_maybe_shared(Bytes::from(jws)).map_err(|_| failed())?;
        value.set_sensitive(true);
        Ok(value)
    }
}

/// `n` in decimal, without an allocation.
fn itoa(mut n: u64, buffer: &mut [u8; 20]) -> &str {
    let mut at = buffer.len();
    loop {
        at -= 1;
        buffer[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buffer[at..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn htu_drops_query_fragment_and_userinfo() {
        let uri: http::Uri = "HTTPS://Api.Example.com:8443/a/b?x=1".parse().unwrap();
        let htu = Htu::of_uri(&uri).unwrap();
        assert_eq!(htu.htu, "https://api.example.com:8443/a/b");
        assert_eq!(htu.origin(), "https://api.example.com:8443");
        let uri: http::Uri = "http://u:p@h.example/".parse().unwrap();
        assert_eq!(Htu::of_uri(&uri).unwrap().htu, "http://h.example/");
        let uri: http::Uri = "/only/a/path?q".parse().unwrap();
        assert!(Htu::of_uri(&uri).is_none());
        let htu = Htu::of_relative("https://grpc.example.com", &uri).unwrap();
        assert_eq!(htu.htu, "https://grpc.example.com/only/a/path");
        assert_eq!(htu.origin(), "https://grpc.example.com");
        let url = url::Url::parse("https://u:p@Api.Example.com/a/b?x=1#f").unwrap();
        let htu = Htu::of_url(&url).unwrap();
        assert_eq!(htu.htu, "https://api.example.com/a/b");
        assert_eq!(htu.origin(), "https://api.example.com");
    }

    #[test]
    fn numbers_and_strings() {
        assert_eq!(itoa(0, &mut [0; 20]), "0");
        assert_eq!(itoa(1_700_000_000, &mut [0; 20]), "1700000000");
        assert_eq!(itoa(u64::MAX, &mut [0; 20]), u64::MAX.to_string());
        let mut out = String::new();
        push_json_str(&mut out, "a\"b\\c");
        assert_eq!(out, r#""a\"b\\c""#);
    }
}
