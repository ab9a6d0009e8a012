//! Which answers say "this token was rejected": the one place that decides,
//! for the layer, the [`Replay`](super::Replay) policy and the
//! `reqwest-middleware` adapter.

use http::{header::WWW_AUTHENTICATE, HeaderMap, HeaderValue, StatusCode};

/// A response extension: the access token this request carried was
/// rejected, and the layer has dropped it from its cache, so the next
/// request (or a [`Replay`](super::Replay) of this one) carries a new one.
///
/// [`BearerAuth`](super::BearerAuth) adds it to
/// - a `401` whose `WWW-Authenticate: Bearer` challenge says
///   `error="invalid_token"`, or names no error at all (unless
///   [`plain_401_rejects(false)`](super::BearerAuthLayer::plain_401_rejects));
/// - a gRPC answer with `grpc-status: 16` (`UNAUTHENTICATED`) in its
///   headers, under the same rule for its challenge.
///
/// A `403 insufficient_scope`, or a `401` naming another error
/// (`invalid_request`), is not a rejected token.
///
/// ```
/// # fn check(response: http::Response<()>) {
/// if response.extensions().get::<tower_oauth2::layer::TokenRejected>().is_some() {
///     // the token was dropped; sending the request again gets a new one
/// }
/// # }
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenRejected;

/// gRPC's status code for a missing or invalid credential.
const GRPC_UNAUTHENTICATED: &[u8] = b"16";

/// The header gRPC's status travels in (parsed once, not per answer).
const GRPC_STATUS: http::HeaderName = http::HeaderName::from_static("grpc-status");

/// Whether an answer may reject its token: a `401`, or a `200` with headers
/// (a gRPC error travels in a 200). Every other answer, the usual one, is
/// settled here without a call.
#[inline(always)]
pub(crate) fn may_reject(status: StatusCode, headers: &HeaderMap) -> bool {
    status == StatusCode::UNAUTHORIZED || (status == StatusCode::OK && !headers.is_empty())
}

/// Whether an answer with `status` and `headers` rejects the token it was
/// sent with. `plain_401`: whether a rejection that names no error counts.
#[inline]
pub(crate) fn rejects(status: StatusCode, headers: &HeaderMap, plain_401: bool) -> bool {
    let unauthenticated = if status == StatusCode::UNAUTHORIZED {
        true
    } else if status == StatusCode::OK && !headers.is_empty() {
        // A gRPC error travels in a 200 (trailers-only answers carry it in the headers).
        headers
            .get(GRPC_STATUS)
            .is_some_and(|code| code.as_bytes() == GRPC_UNAUTHENTICATED)
    } else {
        false
    };
    if !unauthenticated {
        return false;
    }
    match headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .find_map(challenge_error)
    {
        Some(code) => code.eq_ignore_ascii_case("invalid_token"),
        None => plain_401,
    }
}

/// The DPoP error of a `401` (RFC 9449 §7.1 and §9): `Some(true)` for
/// `use_dpop_nonce`, `Some(false)` for `invalid_dpop_proof`, `None` for
/// anything else (an `invalid_token` is a rejected token, as for bearer).
#[cfg(dpop)]
pub(crate) fn dpop_error(status: StatusCode, headers: &HeaderMap) -> Option<bool> {
    if status != StatusCode::UNAUTHORIZED {
        return None;
    }
    let code = headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .find_map(challenge_error)?;
    if code.eq_ignore_ascii_case("use_dpop_nonce") {
        Some(true)
    } else if code.eq_ignore_ascii_case("invalid_dpop_proof") {
        Some(false)
    } else {
        None
    }
}

/// The `error` parameter of a `WWW-Authenticate` challenge (RFC 6750 §3),
/// skipping quoted strings so a description cannot fake one.
fn challenge_error(value: &HeaderValue) -> Option<&str> {
    // `to_str` admits visible ASCII only, so byte indices are char boundaries.
    let text = value.to_str().ok()?;
    let bytes = text.as_bytes();
    let (mut i, mut quoted) = (0, false);
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if quoted => i += 1,
            b'"' => quoted = !quoted,
            _ if !quoted
                && text[i..].starts_with("error")
                && (i == 0 || matches!(bytes[i - 1], b' ' | b',' | b'\t')) =>
            {
                if let Some(value) = text[i + 5..].trim_start().strip_prefix('=') {
                    let value = value.trim_start();
                    return Some(match value.strip_prefix('"') {
                        Some(rest) => rest.split('"').next().unwrap_or(""),
                        None => value.split([',', ' ']).next().unwrap_or(""),
                    });
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    http::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn which_401s_reject_the_token() {
        let unauthorized = StatusCode::UNAUTHORIZED;
        let invalid = headers(&[(
            "www-authenticate",
            r#"Bearer realm="api", error="invalid_token", error_description="expired""#,
        )]);
        assert!(rejects(unauthorized, &invalid, true) && rejects(unauthorized, &invalid, false));
        let plain = HeaderMap::new();
        assert!(rejects(unauthorized, &plain, true) && !rejects(unauthorized, &plain, false));
        let realm_only = headers(&[("www-authenticate", r#"Bearer realm="api""#)]);
        assert!(rejects(unauthorized, &realm_only, true));
        assert!(!rejects(unauthorized, &realm_only, false));
        let other = headers(&[("www-authenticate", r#"Bearer error="invalid_request""#)]);
        assert!(!rejects(unauthorized, &other, true));
        let unquoted = headers(&[("www-authenticate", "Bearer error=invalid_token")]);
        assert!(rejects(unauthorized, &unquoted, false));
        let scope = headers(&[("www-authenticate", r#"Bearer error="insufficient_scope""#)]);
        assert!(!rejects(StatusCode::FORBIDDEN, &scope, true));
        assert!(!rejects(StatusCode::OK, &plain, true));
        assert!(!rejects(StatusCode::INTERNAL_SERVER_ERROR, &plain, true));
    }

    #[test]
    fn grpc_unauthenticated_rejects_the_token() {
        let ok = StatusCode::OK;
        let grpc = |code| headers(&[("content-type", "application/grpc"), ("grpc-status", code)]);
        assert!(rejects(ok, &grpc("16"), true));
        assert!(!rejects(ok, &grpc("16"), false), "names no error");
        assert!(!rejects(ok, &grpc("7"), true), "PERMISSION_DENIED is not");
        assert!(!rejects(ok, &grpc("0"), true));
        let mut named = grpc("16");
        named.insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token""#),
        );
        assert!(rejects(ok, &named, false));
    }

    #[test]
    fn description_mentioning_error_is_not_the_code() {
        let value = HeaderValue::from_static(
            r#"Bearer error_description="error=x", error="invalid_token""#,
        );
        assert_eq!(challenge_error(&value), Some("invalid_token"));
    }
}
