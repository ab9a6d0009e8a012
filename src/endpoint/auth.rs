//! Client authentication at the token endpoint (RFC 6749 §2.3).

use base64::{engine::general_purpose::STANDARD, Engine as _};
use http::HeaderValue;
use secrecy::SecretString;
use url::Url;

use super::assertion::{Assertion, ASSERTION_TYPE};
use crate::{token::expose, Error};

/// How the client proves its identity to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum AuthMethod {
    /// `client_secret_basic`: HTTP Basic with the client id and secret, each
    /// form-urlencoded first as RFC 6749 §2.3.1 requires. The default: every
    /// compliant server must accept it.
    #[default]
    ClientSecretBasic,
    /// HTTP Basic with the raw id and secret, not form-urlencoded. For servers
    /// that get §2.3.1 wrong; identical to [`ClientSecretBasic`] unless the id
    /// or secret holds characters that need encoding.
    ///
    /// [`ClientSecretBasic`]: AuthMethod::ClientSecretBasic
    ClientSecretBasicUnencoded,
    /// `client_secret_post`: `client_id` and `client_secret` in the form body.
    /// OfficeRnD documents this one.
    ClientSecretPost,
    /// A public client: `client_id` in the body and no secret.
    None,
    /// `private_key_jwt` (RFC 7523 §2.2, OpenID Connect Core §9): a
    /// short-lived JWT signed by the client, fresh for every token request,
    /// sent as `client_assertion` with `client_id` in the body. Set by the
    /// builders' `private_key_jwt` (the `private-key-jwt` feature) and
    /// `client_assertion` methods, which need no `auth_method` call.
    PrivateKeyJwt,
    /// `tls_client_auth` (RFC 8705 §2.1): the client authenticates with a
    /// certificate from a CA the server trusts, in the TLS handshake, and
    /// sends `client_id` in the body, no secret. The server matches the
    /// certificate's subject (or a SAN) against the client's registration.
    /// The certificate is the builders' `client_certificate`
    /// ([`ClientIdentity`](crate::endpoint::ClientIdentity)), presented by the crate's
    /// own reqwest client, or configured on a `transport` of your own. Implied
    /// by `client_certificate` for a client with no secret and no assertion.
    TlsClientAuth,
    /// `self_signed_tls_client_auth` (RFC 8705 §2.2): as
    /// [`TlsClientAuth`](AuthMethod::TlsClientAuth) (the request is the
    /// same), with a self-signed certificate the client registered with the
    /// server (in its `jwks`, as an `x5c`) instead of one from a CA.
    SelfSignedTlsClientAuth,
}

impl AuthMethod {
    /// The method's registered name (`client_secret_basic`,
    /// `tls_client_auth`, ...), as `token_endpoint_auth_method` and server
    /// metadata spell it. [`ClientSecretBasicUnencoded`] is
    /// `client_secret_basic` too.
    ///
    /// [`ClientSecretBasicUnencoded`]: AuthMethod::ClientSecretBasicUnencoded
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ClientSecretBasic | Self::ClientSecretBasicUnencoded => "client_secret_basic",
            Self::ClientSecretPost => "client_secret_post",
            Self::None => "none",
            Self::PrivateKeyJwt => "private_key_jwt",
            Self::TlsClientAuth => "tls_client_auth",
            Self::SelfSignedTlsClientAuth => "self_signed_tls_client_auth",
        }
    }

    /// Whether the client authenticates with its TLS certificate (RFC 8705 §2).
    pub fn is_mtls(self) -> bool {
        matches!(self, Self::TlsClientAuth | Self::SelfSignedTlsClientAuth)
    }
}

/// Client credentials, ready to attach to a token request.
#[derive(Clone)]
pub(crate) enum ClientAuth {
    /// A prebuilt, sensitive `Authorization` header.
    Header(HeaderValue),
    /// Form parameters; the secret is absent for public clients.
    Body {
        client_id: String,
        client_secret: Option<SecretString>,
    },
    /// `client_id` and a fresh client assertion in the body.
    Assertion {
        client_id: String,
        assertion: Assertion,
    },
}

/// The client authentication of one token request.
pub(crate) struct RequestAuth<'a> {
    auth: &'a ClientAuth,
    /// Made for this request alone; `Some` exactly for [`ClientAuth::Assertion`].
    assertion: Option<SecretString>,
}

impl ClientAuth {
    pub(crate) fn new(
        method: AuthMethod,
        client_id: String,
        client_secret: Option<SecretString>,
        assertion: Option<Assertion>,
    ) -> Result<Self, Error> {
        let basic = |id: &str, secret: &str| -> Result<Self, Error> {
            let mut value = HeaderValue::try_from(format!(
                "Basic {}",
                STANDARD.encode(format!("{id}:{secret}"))
            ))
            .map_err(|_| Error::config("client credentials do not fit in a header"))?;
            value.set_sensitive(true);
            Ok(Self::Header(value))
        };
        match (method, assertion) {
            (AuthMethod::PrivateKeyJwt, Some(assertion)) if client_secret.is_none() => {
                return Ok(Self::Assertion {
                    client_id,
                    assertion,
                })
            }
            (AuthMethod::PrivateKeyJwt, Some(_)) => {
                return Err(Error::config(
                    "private_key_jwt uses no client secret; remove client_secret",
                ))
            }
            (AuthMethod::PrivateKeyJwt, None) => {
                return Err(Error::config(
                    "AuthMethod::PrivateKeyJwt needs a key (private_key_jwt) or a client_assertion callback",
                ))
            }
            (_, Some(_)) => {
                return Err(Error::config(
                    "a client assertion is set, so the auth method must be AuthMethod::PrivateKeyJwt",
                ))
            }
            (_, None) => {}
        }
        match (method, client_secret) {
            (AuthMethod::None, _) => Ok(Self::Body {
                client_id,
                client_secret: None,
            }),
            // RFC 8705 §2: the certificate authenticates; the body names the client.
            (AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth, None) => {
                Ok(Self::Body {
                    client_id,
                    client_secret: None,
                })
            }
            (AuthMethod::TlsClientAuth | AuthMethod::SelfSignedTlsClientAuth, Some(_)) => {
                Err(Error::config(
                    "mutual-TLS client authentication uses no client secret; remove client_secret",
                ))
            }
            (AuthMethod::ClientSecretPost, Some(secret)) => Ok(Self::Body {
                client_id,
                client_secret: Some(secret),
            }),
            (AuthMethod::ClientSecretBasic, Some(secret)) => {
                basic(&form_encode(&client_id), &form_encode(expose(&secret)))
            }
            (AuthMethod::ClientSecretBasicUnencoded, Some(secret)) => {
                if client_id.contains(':') {
                    return Err(Error::config(
                        "a client id containing ':' cannot be sent unencoded in HTTP Basic",
                    ));
                }
                basic(&client_id, expose(&secret))
            }
            // Answered by the match above.
            (AuthMethod::PrivateKeyJwt, Some(_)) => Err(Error::config(
                "private_key_jwt uses no client secret; remove client_secret",
            )),
            (_, None) => Err(Error::config(
                "this auth method needs a client secret; use AuthMethod::None for a public client",
            )),
        }
    }

    /// The authentication of one request to `token_url`: with a client
    /// assertion, a fresh one (never reused, not even by a retry).
    pub(crate) async fn for_request(&self, token_url: &Url) -> Result<RequestAuth<'_>, Error> {
        let assertion = match self {
            Self::Assertion { assertion, .. } => Some(assertion.make(token_url).await?),
            Self::Header(_) | Self::Body { .. } => None,
        };
        Ok(RequestAuth {
            auth: self,
            assertion,
        })
    }

    pub(crate) fn header(&self) -> Option<&HeaderValue> {
        match self {
            Self::Header(value) => Some(value),
            Self::Body { .. } | Self::Assertion { .. } => None,
        }
    }
}

impl RequestAuth<'_> {
    /// Adds the body parameters, if this method uses any.
    pub(crate) fn append_to(&self, form: &mut form_urlencoded::Serializer<'_, String>) {
        match (self.auth, &self.assertion) {
            (
                ClientAuth::Body {
                    client_id,
                    client_secret,
                },
                _,
            ) => {
                form.append_pair("client_id", client_id);
                if let Some(secret) = client_secret {
                    form.append_pair("client_secret", expose(secret));
                }
            }
            (ClientAuth::Assertion { client_id, .. }, Some(assertion)) => {
                form.append_pair("client_id", client_id);
                form.append_pair("client_assertion_type", ASSERTION_TYPE);
                form.append_pair("client_assertion", expose(assertion));
            }
            (ClientAuth::Assertion { .. }, None) | (ClientAuth::Header(_), _) => {}
        }
    }

    /// The `Authorization` header, if this method uses one.
    pub(crate) fn header(&self) -> Option<&HeaderValue> {
        self.auth.header()
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(method: AuthMethod, id: &str, secret: &str) -> HeaderValue {
        let auth =
            ClientAuth::new(method, id.into(), Some(secret.to_owned().into()), None).unwrap();
        auth.header().cloned().expect("basic auth sets a header")
    }

    #[test]
    fn basic_encodes_before_base64() {
        // The vector from RFC 6749 §2.3.1's errata discussion, as used by
        // other implementations' test suites.
        let value = header(
            AuthMethod::ClientSecretBasic,
            "CLIENT_ID??",
            "CLIENT_SECRET??",
        );
        assert_eq!(
            value,
            "Basic Q0xJRU5UX0lEJTNGJTNGOkNMSUVOVF9TRUNSRVQlM0YlM0Y="
        );
        assert!(value.is_sensitive());
    }

    #[test]
    fn basic_unencoded_is_plain_base64() {
        let value = header(
            AuthMethod::ClientSecretBasicUnencoded,
            "CLIENT_ID??",
            "CLIENT_SECRET??",
        );
        assert_eq!(
            value,
            format!("Basic {}", STANDARD.encode("CLIENT_ID??:CLIENT_SECRET??"))
        );
    }

    #[test]
    fn basic_encodes_colon_in_id_and_specials_in_secret() {
        let value = header(AuthMethod::ClientSecretBasic, "a:b", "+ % : é=");
        let b64 = value.to_str().unwrap().strip_prefix("Basic ").unwrap();
        let decoded = String::from_utf8(STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!(decoded, "a%3Ab:%2B+%25+%3A+%C3%A9%3D");
    }

    #[test]
    fn secret_required_unless_public() {
        let err = ClientAuth::new(AuthMethod::ClientSecretBasic, "id".into(), None, None)
            .err()
            .unwrap();
        assert_eq!(err.kind(), &crate::ErrorKind::Config);
        assert!(ClientAuth::new(AuthMethod::None, "id".into(), None, None).is_ok());
    }
}
