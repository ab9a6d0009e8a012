//! Reading token endpoint answers (RFC 6749 §5.1 and §5.2), as real servers send them.

use std::time::Duration;

use http::StatusCode;
use secrecy::SecretString;
use serde_json::{Map, Value};

use crate::{
    clock::Instant,
    token::{Token, MAX_LIFETIME},
    Error, OAuthErrorCode,
};

/// How strictly to read a success response.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Leniency {
    /// Accept a response without `token_type` as a bearer token.
    pub(crate) missing_token_type: bool,
    /// Accept `token_type: DPoP`: the request carried a DPoP proof.
    pub(crate) dpop: bool,
    /// Accept `token_type: N_A` (RFC 8693 §2.2.1): a token exchange asked
    /// for a token that is not an access token. It is kept as a bearer
    /// token: the layer sends it in `Authorization: Bearer`.
    pub(crate) not_applicable: bool,
}

/// A token endpoint answer that gave no usable token.
///
/// A success answer can be refused (an unknown `token_type`, a malformed
/// `expires_in`) and still carry a new refresh token. The server has rotated
/// by then, so the old refresh token is dead: the new one travels here, apart
/// from the [`Error`] (errors never hold secrets), for the grant to keep.
pub(crate) struct Refused {
    pub(crate) error: Error,
    pub(crate) refresh_token: Option<SecretString>,
}

impl From<Error> for Refused {
    fn from(error: Error) -> Self {
        Self {
            error,
            refresh_token: None,
        }
    }
}

/// Turns a token endpoint answer into a token or a precise error.
///
/// `requested_scopes` stand in for a missing `scope` field (RFC 6749 §5.1:
/// omitted means identical to the request). Never panics, whatever the bytes.
pub(crate) fn parse(
    status: StatusCode,
    body: &[u8],
    sent_at: Instant,
    requested_scopes: &[String],
    leniency: Leniency,
) -> Result<Token, Refused> {
    let json = serde_json::from_slice::<Value>(body).ok();
    let object = match json {
        Some(Value::Object(object)) => Some(object),
        _ => None,
    };

    // An OAuth error body wins whatever the status: some servers send 200.
    // RFC 6749 §5.2 needs a non-empty code: `"error": null` or `""` is what
    // .NET and Jackson write for an absent field, not an error.
    if let Some(object) = &object {
        match object.get("error") {
            None | Some(Value::Null) => {}
            Some(Value::String(code)) if code.is_empty() => {}
            Some(Value::String(code)) => {
                let description = object.get("error_description").and_then(Value::as_str);
                let code = OAuthErrorCode::parse(code);
                return Err(Error::oauth(code, description).with_status(status).into());
            }
            Some(_) => {
                return Err(Error::invalid_response("`error` is not a string")
                    .with_status(status)
                    .into())
            }
        }
    }
    if !status.is_success() {
        return Err(Error::http_status(status).into());
    }
    let Some(object) = object else {
        return Err(
            Error::invalid_response("unexpected response: the body is not a JSON object")
                .with_status(status)
                .into(),
        );
    };
    let refresh_token = match object.get("refresh_token") {
        Some(Value::String(token)) if !token.is_empty() => Some(token.clone()),
        // Missing, empty or null: the server issued none; the grant keeps the old one.
        None | Some(Value::Null) | Some(Value::String(_)) => None,
        Some(_) => {
            return Err(Error::invalid_response("`refresh_token` is not a string")
                .with_status(status)
                .into())
        }
    };
    success(
        &object,
        sent_at,
        requested_scopes,
        leniency,
        refresh_token.clone(),
    )
    .map_err(|e| Refused {
        error: e.with_status(status),
        refresh_token: refresh_token.map(SecretString::from),
    })
}

fn success(
    object: &Map<String, Value>,
    sent_at: Instant,
    requested_scopes: &[String],
    leniency: Leniency,
    refresh_token: Option<String>,
) -> Result<Token, Error> {
    let access_token = match object.get("access_token") {
        Some(Value::String(token)) => token.clone(),
        Some(_) => return Err(Error::invalid_response("`access_token` is not a string")),
        None => return Err(Error::invalid_response("`access_token` is missing")),
    };

    let mut dpop = false;
    match object.get("token_type") {
        Some(Value::String(kind)) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(Value::String(kind)) if leniency.not_applicable && kind == "N_A" => {}
        Some(Value::String(kind)) if leniency.dpop && kind.eq_ignore_ascii_case("dpop") => {
            dpop = true;
        }
        Some(Value::String(kind)) if kind.eq_ignore_ascii_case("dpop") => {
            return Err(Error::invalid_response(
                "`token_type` is DPoP, but the request carried no DPoP proof",
            ))
        }
        Some(Value::String(_)) => {
            return Err(Error::invalid_response(
                "unsupported `token_type`: only bearer tokens are supported",
            ))
        }
        None | Some(Value::Null) if leniency.missing_token_type => {}
        None | Some(Value::Null) => return Err(Error::invalid_response("`token_type` is missing")),
        Some(_) => return Err(Error::invalid_response("`token_type` is not a string")),
    }

    let mut builder = Token::builder(access_token).issued_at(sent_at);
    if dpop {
        builder = builder.dpop_type();
    }
    if let Some(lifetime) = expires_in(object.get("expires_in"))? {
        builder = builder.expires_in(lifetime);
    }
    if let Some(refresh_token) = refresh_token {
        builder = builder.refresh_token(refresh_token);
    }
    builder = match object.get("scope") {
        Some(Value::String(scope)) => builder.scopes(scope.split_whitespace()),
        None | Some(Value::Null) => builder.scopes(requested_scopes.iter().cloned()),
        Some(_) => return Err(Error::invalid_response("`scope` is not a string")),
    };
    builder.build()
}

/// `expires_in` as a number or a numeric string; absent or null is `None`.
fn expires_in(value: Option<&Value>) -> Result<Option<Duration>, Error> {
    let invalid = || Error::invalid_response("`expires_in` is not a non-negative number");
    let seconds = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::Number(n)) => n.as_f64().ok_or_else(invalid)?,
        Some(Value::String(s)) => s.trim().parse::<f64>().map_err(|_| invalid())?,
        Some(_) => return Err(invalid()),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(invalid());
    }
    // Saturates instead of overflowing for absurd values.
    let capped = seconds.min(MAX_LIFETIME.as_secs_f64());
    Ok(Some(Duration::from_secs_f64(capped)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use secrecy::ExposeSecret;

    fn answer(body: &str) -> Result<Token, Refused> {
        parse(
            StatusCode::OK,
            body.as_bytes(),
            crate::clock::now(),
            &["requested".to_owned()],
            Leniency::default(),
        )
    }

    fn ok(body: &str) -> Result<Token, Error> {
        answer(body).map_err(|refused| refused.error)
    }

    #[tokio::test]
    async fn minimal_response_without_expiry() {
        let token = ok(r#"{"access_token":"x","token_type":"Bearer"}"#).unwrap();
        assert_eq!(token.access_token().expose_secret(), "x");
        assert_eq!(token.expires_in(), None);
        assert_eq!(token.scopes(), ["requested"]);
    }

    #[tokio::test]
    async fn token_type_is_case_insensitive() {
        for kind in ["bearer", "BEARER", "Bearer"] {
            let token = ok(&format!(r#"{{"access_token":"x","token_type":"{kind}"}}"#)).unwrap();
            assert_eq!(token.header_value(), "Bearer x");
        }
    }

    #[tokio::test]
    async fn other_or_missing_token_type_is_refused() {
        for body in [
            r#"{"access_token":"x","token_type":"mac"}"#,
            r#"{"access_token":"x"}"#,
            r#"{"access_token":"x","token_type":7}"#,
        ] {
            assert_eq!(
                ok(body).unwrap_err().kind(),
                &ErrorKind::InvalidResponse,
                "{body}"
            );
        }
        let lenient = Leniency {
            missing_token_type: true,
            ..Leniency::default()
        };
        let token = parse(
            StatusCode::OK,
            br#"{"access_token":"x"}"#,
            crate::clock::now(),
            &[],
            lenient,
        );
        assert!(token.is_ok());
    }

    #[tokio::test]
    async fn expires_in_forms() {
        let lifetime = |v: &str| {
            ok(&format!(
                r#"{{"access_token":"x","token_type":"bearer","expires_in":{v}}}"#
            ))
            .map(|t| t.expires_in())
        };
        assert_eq!(lifetime("3599").unwrap(), Some(Duration::from_secs(3599)));
        assert_eq!(
            lifetime(r#""3599""#).unwrap(),
            Some(Duration::from_secs(3599))
        );
        assert_eq!(lifetime("null").unwrap(), None);
        assert_eq!(lifetime("1e300").unwrap(), Some(MAX_LIFETIME));
        assert_eq!(
            lifetime("18446744073709551615").unwrap(),
            Some(MAX_LIFETIME)
        );
        for bad in [r#""abc""#, "-5", "true", "{}", "[]", r#""""#] {
            assert_eq!(
                lifetime(bad).unwrap_err().kind(),
                &ErrorKind::InvalidResponse,
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn unknown_fields_are_ignored() {
        let token = ok(
            r#"{"access_token":"x","token_type":"bearer","id_token":"a.b.c",
            "ext_expires_in":3599,"nested":{"deep":[1,2,{"x":null}]},"scope":" a  b "}"#,
        )
        .unwrap();
        assert_eq!(token.scopes(), ["a", "b"]);
    }

    #[tokio::test]
    async fn bad_access_tokens() {
        for body in [
            r#"{"token_type":"bearer"}"#,
            r#"{"access_token":"","token_type":"bearer"}"#,
            r#"{"access_token":42,"token_type":"bearer"}"#,
            r#"{"access_token":"a\r\nb","token_type":"bearer"}"#,
        ] {
            assert_eq!(
                ok(body).unwrap_err().kind(),
                &ErrorKind::InvalidResponse,
                "{body}"
            );
        }
    }

    #[tokio::test]
    async fn error_body_wins_over_status() {
        let err = ok(r#"{"error":"invalid_grant","error_description":"expired"}"#).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::OAuth(OAuthErrorCode::InvalidGrant));
        assert_eq!(err.status(), Some(StatusCode::OK));
        assert_eq!(err.description(), Some("expired"));
    }

    #[tokio::test]
    async fn html_error_page_is_a_status_error_without_body() {
        let err = parse(
            StatusCode::BAD_GATEWAY,
            b"<html>SECRET-IN-PAGE</html>",
            crate::clock::now(),
            &[],
            Leniency::default(),
        )
        .map_err(|refused| refused.error)
        .unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::Status);
        assert!(err.is_transient());
        assert!(!format!("{err} {err:?}").contains("SECRET"));
    }

    #[tokio::test]
    async fn html_with_200_is_unexpected_response() {
        let err = ok("<html>hi</html>").unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidResponse);
        assert!(err.to_string().contains("unexpected response"));
    }

    mod never_panics {
        use super::*;
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(Value::from),
                any::<f64>().prop_map(Value::from),
                ".{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                    prop::collection::btree_map(
                        prop_oneof![
                            Just("access_token".to_owned()),
                            Just("token_type".to_owned()),
                            Just("expires_in".to_owned()),
                            Just("refresh_token".to_owned()),
                            Just("scope".to_owned()),
                            Just("error".to_owned()),
                            Just("error_description".to_owned()),
                            "[a-z_]{1,8}",
                        ],
                        inner,
                        0..6,
                    )
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn check(status: u16, body: &[u8]) {
            let status = StatusCode::from_u16(status).unwrap();
            let now = crate::clock::Instant::now();
            match parse(status, body, now, &[], Leniency::default()) {
                Ok(token) => assert!(token
                    .header_value()
                    .to_str()
                    .unwrap()
                    .starts_with("Bearer ")),
                Err(Refused { error, .. }) => {
                    let _ = format!("{error} {error:?}");
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn arbitrary_bytes(status in 100u16..600, body in prop::collection::vec(any::<u8>(), 0..256)) {
                check(status, &body);
            }

            #[test]
            fn arbitrary_json(status in prop::sample::select(vec![200u16, 400, 401, 500]), value in json_value()) {
                check(status, value.to_string().as_bytes());
            }
        }
    }

    #[tokio::test]
    async fn empty_or_null_refresh_token_means_none() {
        for rt in [r#""""#, "null"] {
            let token = ok(&format!(
                r#"{{"access_token":"x","token_type":"bearer","refresh_token":{rt}}}"#
            ))
            .unwrap();
            assert!(token.refresh_token().is_none());
        }
    }

    #[tokio::test]
    async fn null_or_empty_error_is_a_success() {
        for error in ["null", r#""""#] {
            let token = ok(&format!(
                r#"{{"access_token":"x","token_type":"Bearer","error":{error},"error_description":null}}"#
            ))
            .unwrap();
            assert_eq!(token.header_value(), "Bearer x");
        }
        // Without a token it is still refused, as a bad success answer.
        let err = ok(r#"{"error":null}"#).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidResponse);
        let err = ok(r#"{"error":7}"#).unwrap_err();
        assert_eq!(err.kind(), &ErrorKind::InvalidResponse);
    }

    #[tokio::test]
    async fn a_refused_success_answer_hands_back_its_refresh_token() {
        for body in [
            r#"{"access_token":"x","token_type":"mac","refresh_token":"rt-2"}"#,
            r#"{"access_token":"a b","token_type":"Bearer","refresh_token":"rt-2"}"#,
            r#"{"access_token":"x","token_type":"Bearer","expires_in":-5,"refresh_token":"rt-2"}"#,
            r#"{"token_type":"Bearer","refresh_token":"rt-2"}"#,
        ] {
            let refused = answer(body).map(|_| ()).unwrap_err();
            assert_eq!(refused.error.kind(), &ErrorKind::InvalidResponse, "{body}");
            let kept = refused.refresh_token.expect(body);
            assert_eq!(kept.expose_secret(), "rt-2");
            // The error itself holds no secret.
            assert!(!format!("{} {:?}", refused.error, refused.error).contains("rt-2"));
        }
        // An OAuth error carries none.
        let refused = answer(r#"{"error":"invalid_grant","refresh_token":"rt-2"}"#)
            .map(|_| ())
            .unwrap_err();
        assert!(refused.refresh_token.is_none());
    }
}
