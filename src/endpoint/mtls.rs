//! Mutual-TLS client authentication and certificate-bound tokens (RFC 8705).

use std::{fmt, sync::Arc};

use base64::{
    engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD},
    Engine as _,
};
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use crate::Error;

/// The client certificate a grant presents in the TLS handshake with the
/// authorization server (RFC 8705): to authenticate with
/// [`AuthMethod::TlsClientAuth`](crate::AuthMethod::TlsClientAuth) or
/// [`AuthMethod::SelfSignedTlsClientAuth`](crate::AuthMethod::SelfSignedTlsClientAuth),
/// and to have the server bind its access tokens to the certificate
/// (RFC 8705 §3). Given to a builder's `client_certificate`.
///
/// [`from_pem`](Self::from_pem) holds the private key too: the crate's own
/// reqwest client then presents the certificate. With a transport of your
/// own (`transport(...)`, `http_client(...)`), the certificate goes on that
/// client's TLS configuration instead, and
/// [`from_certificate_pem`](Self::from_certificate_pem) tells the crate
/// which certificate that is (for [`Token::x5t_s256`](crate::Token::x5t_s256)),
/// without the key.
///
/// Cheap to clone. `Debug` shows the certificate's thumbprint, never the key.
#[derive(Clone)]
pub struct ClientIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    /// The certificates, leaf first, as PEM.
    #[cfg_attr(not(reqwest_tls), allow(dead_code))]
    chain_pem: String,
    /// The leaf's private key, as PEM; `None` for a certificate alone.
    key_pem: Option<SecretString>,
    /// `x5t#S256` of the leaf: base64url(SHA-256(DER)), no padding.
    thumbprint: String,
    /// Whether the key is PKCS #8 (`BEGIN PRIVATE KEY`), which native-tls needs.
    #[cfg_attr(not(feature = "reqwest-native-tls"), allow(dead_code))]
    pkcs8: bool,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("x5t#S256", &self.inner.thumbprint)
            .field(
                "private_key",
                &self.inner.key_pem.as_ref().map(|_| "[REDACTED]"),
            )
            .finish()
    }
}

/// Private key PEM labels a TLS stack takes (PKCS #8, PKCS #1, SEC1).
const KEY_LABELS: &[&str] = &["PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"];

impl ClientIdentity {
    /// A certificate chain (PEM, leaf first, intermediates after it) and
    /// the leaf's private key (PEM: PKCS #8 `BEGIN PRIVATE KEY`, or
    /// PKCS #1 `BEGIN RSA PRIVATE KEY` / SEC1 `BEGIN EC PRIVATE KEY` with
    /// rustls; native-tls takes PKCS #8 only).
    ///
    /// Fails with [`ErrorKind::Config`](crate::ErrorKind::Config) when the
    /// chain holds no certificate, a block that is not one, or bad base64;
    /// when the key is not exactly one unencrypted private key; or, with a
    /// reqwest TLS feature, when the TLS stack cannot read them. Whether the
    /// key is the certificate's is checked when a grant's `build` makes its
    /// client. The errors never quote the input.
    pub fn from_pem(
        cert_chain_pem: impl AsRef<[u8]>,
        key_pem: impl AsRef<[u8]>,
    ) -> Result<Self, Error> {
        let (chain_pem, thumbprint) = read_chain(cert_chain_pem.as_ref())?;
        let key_text = std::str::from_utf8(key_pem.as_ref())
            .map_err(|_| Error::config("the client certificate's key is not PEM text"))?;
        let blocks = pem_blocks(key_text, "the client certificate's key")?;
        let label = match blocks.as_slice() {
            [(label, _)] if KEY_LABELS.contains(&label.as_str()) => label.clone(),
            [(label, _)] if label == "ENCRYPTED PRIVATE KEY" => {
                return Err(Error::config(
                    "the client certificate's key is encrypted; give it decrypted",
                ))
            }
            [] => {
                return Err(Error::config(
                    "the client certificate's key holds no PEM private key",
                ))
            }
            [_] => {
                return Err(Error::config(
                    "the client certificate's key is not a PEM private key \
                     (PRIVATE KEY, RSA PRIVATE KEY or EC PRIVATE KEY)",
                ))
            }
            _ => {
                return Err(Error::config(
                    "the client certificate's key must hold exactly one PEM block",
                ))
            }
        };
        let identity = Self {
            inner: Arc::new(Inner {
                chain_pem,
                key_pem: Some(SecretString::from(key_text.to_owned())),
                thumbprint,
                pkcs8: label == "PRIVATE KEY",
            }),
        };
        // Refused by the TLS stack now rather than at the first request.
        #[cfg(reqwest_tls)]
        identity.reqwest_identity()?;
        Ok(identity)
    }

    /// A certificate chain alone (PEM, leaf first), for a transport of your
    /// own that presents it: the crate cannot present it (it has no key),
    /// but knows the thumbprint of the certificate its tokens are bound to.
    /// The same checks as [`from_pem`](Self::from_pem) for the chain.
    pub fn from_certificate_pem(cert_chain_pem: impl AsRef<[u8]>) -> Result<Self, Error> {
        let (chain_pem, thumbprint) = read_chain(cert_chain_pem.as_ref())?;
        Ok(Self {
            inner: Arc::new(Inner {
                chain_pem,
                key_pem: None,
                thumbprint,
                pkcs8: false,
            }),
        })
    }

    /// The leaf certificate's SHA-256 thumbprint, base64url without padding:
    /// the `x5t#S256` confirmation a certificate-bound token carries
    /// (RFC 8705 §3.1).
    pub fn x5t_s256(&self) -> &str {
        &self.inner.thumbprint
    }

    /// Whether the private key is held (made by [`from_pem`](Self::from_pem)).
    pub fn has_private_key(&self) -> bool {
        self.inner.key_pem.is_some()
    }

    /// The same identity for a `reqwest::Client` of your own, one that sends
    /// API requests with a certificate-bound token, say:
    /// `reqwest::Client::builder().identity(identity.to_reqwest()?)`.
    /// [`ErrorKind::Config`](crate::ErrorKind::Config) for a certificate
    /// without its key.
    #[cfg(reqwest_tls)]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(
            feature = "reqwest",
            feature = "reqwest-rustls-ring",
            feature = "reqwest-native-tls"
        )))
    )]
    pub fn to_reqwest(&self) -> Result<reqwest::Identity, Error> {
        self.reqwest_identity()
    }

    /// The identity in the form the compiled TLS stack takes: with
    /// native-tls (reqwest's default stack whenever it is compiled), the
    /// chain and a PKCS #8 key; with rustls alone, one PEM buffer.
    #[cfg(reqwest_tls)]
    pub(crate) fn reqwest_identity(&self) -> Result<reqwest::Identity, Error> {
        use crate::token::expose;
        let key = self.inner.key_pem.as_ref().ok_or_else(|| {
            Error::config(
                "the client certificate was given without its private key \
                 (ClientIdentity::from_certificate_pem): the crate's own HTTP client cannot \
                 present it; use ClientIdentity::from_pem, or a transport that presents it",
            )
        })?;
        #[cfg(feature = "reqwest-native-tls")]
        {
            if !self.inner.pkcs8 {
                return Err(Error::config(
                    "with native-tls the client certificate's key must be PKCS #8 \
                     (BEGIN PRIVATE KEY)",
                ));
            }
            reqwest::Identity::from_pkcs8_pem(
                self.inner.chain_pem.as_bytes(),
                expose(key).as_bytes(),
            )
            .map_err(|_| Error::config("the TLS stack refused the client certificate or its key"))
        }
        #[cfg(not(feature = "reqwest-native-tls"))]
        {
            let mut pem = String::with_capacity(self.inner.chain_pem.len() + expose(key).len() + 1);
            pem.push_str(&self.inner.chain_pem);
            pem.push('\n');
            pem.push_str(expose(key));
            let identity = reqwest::Identity::from_pem(pem.as_bytes());
            drop(SecretString::from(pem));
            identity.map_err(|_| {
                Error::config("the TLS stack refused the client certificate or its key")
            })
        }
    }
}

/// The certificate blocks of `pem`, re-encoded, and the leaf's thumbprint.
fn read_chain(pem: &[u8]) -> Result<(String, String), Error> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| Error::config("the client certificate chain is not PEM text"))?;
    let blocks = pem_blocks(text, "the client certificate chain")?;
    if blocks.is_empty() {
        return Err(Error::config(
            "the client certificate chain holds no PEM certificate",
        ));
    }
    if blocks.iter().any(|(label, _)| label != "CERTIFICATE") {
        return Err(Error::config(
            "the client certificate chain holds a PEM block that is not a CERTIFICATE \
             (give the private key separately)",
        ));
    }
    let thumbprint = thumbprint(&blocks[0].1);
    let mut chain = String::new();
    for (_, der) in &blocks {
        chain.push_str("-----BEGIN CERTIFICATE-----\n");
        let encoded = STANDARD.encode(der);
        for line in encoded.as_bytes().chunks(64) {
            // base64 output is ASCII.
            chain.push_str(std::str::from_utf8(line).unwrap_or_default());
            chain.push('\n');
        }
        chain.push_str("-----END CERTIFICATE-----\n");
    }
    Ok((chain, thumbprint))
}

/// `x5t#S256` of a DER certificate (RFC 8705 §3.1).
pub(crate) fn thumbprint(der: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(der))
}

/// The PEM blocks of `text` (RFC 7468), label and decoded contents; text
/// outside blocks is ignored. `what` names the input in errors, which never
/// quote it.
fn pem_blocks(text: &str, what: &str) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut blocks = Vec::new();
    let mut open: Option<(&str, String)> = None;
    for line in text.lines().map(str::trim) {
        match &mut open {
            None => {
                if let Some(label) = line
                    .strip_prefix("-----BEGIN ")
                    .and_then(|rest| rest.strip_suffix("-----"))
                {
                    open = Some((label, String::new()));
                }
            }
            Some((label, body)) => {
                if let Some(end) = line
                    .strip_prefix("-----END ")
                    .and_then(|rest| rest.strip_suffix("-----"))
                {
                    if end != *label {
                        return Err(Error::config(format!(
                            "{what}: a PEM block ends with another label than it began with"
                        )));
                    }
                    let der = STANDARD.decode(body.as_bytes()).map_err(|_| {
                        Error::config(format!("{what}: a PEM block is not valid base64"))
                    })?;
                    if der.is_empty() {
                        return Err(Error::config(format!("{what}: a PEM block is empty")));
                    }
                    blocks.push(((*label).to_owned(), der));
                    open = None;
                } else if line.contains(':') {
                    return Err(Error::config(format!(
                        "{what}: PEM headers (an encrypted key?) are not supported"
                    )));
                } else {
                    body.push_str(line);
                }
            }
        }
    }
    if open.is_some() {
        return Err(Error::config(format!(
            "{what}: a PEM block has no END line"
        )));
    }
    Ok(blocks)
}

#[cfg(test)]
mod tests {
    use super::*;

    // A tiny fake "certificate" is enough for the PEM and thumbprint code:
    // without a reqwest TLS feature nothing parses the DER.
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END CERTIFICATE-----\n";

    #[test]
    fn thumbprint_is_base64url_sha256_of_the_leaf() {
        let identity = ClientIdentity::from_certificate_pem(format!(
            "leading text\n{CERT}-----BEGIN CERTIFICATE-----\nBAU=\n-----END CERTIFICATE-----\n"
        ))
        .unwrap();
        assert_eq!(
            identity.x5t_s256(),
            URL_SAFE_NO_PAD.encode(Sha256::digest([0u8, 1, 2, 3]))
        );
        assert!(!identity.has_private_key());
        assert!(format!("{identity:?}").contains(identity.x5t_s256()));
    }

    #[test]
    fn bad_pem_is_a_config_error_that_quotes_nothing() {
        let secret_looking = "-----BEGIN CERTIFICATE-----\nSENTINEL!!\n-----END CERTIFICATE-----\n";
        for bad in [
            "",
            "no pem here",
            secret_looking,
            "-----BEGIN CERTIFICATE-----\nAAECAw==\n",
            "-----BEGIN CERTIFICATE-----\nAAECAw==\n-----END PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nAAECAw==\n-----END PRIVATE KEY-----\n",
        ] {
            let error = ClientIdentity::from_certificate_pem(bad).unwrap_err();
            assert_eq!(error.kind(), &crate::ErrorKind::Config, "{bad:?}");
            assert!(!error.to_string().contains("SENTINEL"), "{error}");
        }
        for key in [
            "",
            CERT,
            "-----BEGIN ENCRYPTED PRIVATE KEY-----\nAAECAw==\n-----END ENCRYPTED PRIVATE KEY-----\n",
            "-----BEGIN PRIVATE KEY-----\nProc-Type: 4,ENCRYPTED\nAAECAw==\n-----END PRIVATE KEY-----\n",
        ] {
            let error = ClientIdentity::from_pem(CERT, key).unwrap_err();
            assert_eq!(error.kind(), &crate::ErrorKind::Config, "{key:?}");
        }
    }

    #[test]
    fn debug_never_shows_the_key() {
        let key = "-----BEGIN PRIVATE KEY-----\nU0VOVElORUw=\n-----END PRIVATE KEY-----\n";
        // With a TLS stack compiled in, it refuses this fake pair: the
        // error must not quote it either.
        match ClientIdentity::from_pem(CERT, key) {
            Ok(identity) => {
                let shown = format!("{identity:?}");
                assert!(!shown.contains("U0VOVElORUw"), "{shown}");
                assert!(shown.contains("[REDACTED]"), "{shown}");
            }
            Err(error) => {
                assert_eq!(error.kind(), &crate::ErrorKind::Config);
                assert!(!format!("{error:?}").contains("U0VOVElORUw"));
            }
        }
    }
}
