//! Signing keys on the backend the features pick: aws-lc-rs when its
//! feature is on, ring otherwise. The same code serves both (their 0.17-era
//! APIs match but for a random-number argument), written once in
//! `signing_key!` and instantiated per backend.
//!
//! ```ignore
//! let key = SigningKey::p256_pkcs8(&der)?;
//! let signature = key.sign(b"header.claims")?; // JWS signature bytes
//! let public = key.public();                   // for the JWK
//! ```
//!
//! One shape per key: load it, [`SigningKey::sign`] a message into the JWS
//! signature (RFC 7518 §3: RSASSA-PKCS1-v1_5 or RSASSA-PSS with SHA-256, or
//! ECDSA P-256 SHA-256 as `r || s`), [`SigningKey::public`] for the numbers
//! a JWK publishes.

use secrecy::zeroize::Zeroizing;

/// Why a key was refused. Never carries key material.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rejected {
    /// An RSA modulus under 2048 bits.
    TooSmall,
    /// An RSA modulus over what the backend signs with (4096 bits for ring,
    /// 8192 for aws-lc-rs).
    TooLarge,
    /// Anything else: not such a key, inconsistent parts, a failed signature.
    Invalid,
}

/// How an RSA key signs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RsaPadding {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`RS256`).
    Pkcs1,
    /// RSASSA-PSS with SHA-256, 32-byte salt (`PS256`).
    Pss,
}

/// The public numbers of a key, unsigned big-endian without leading zeros
/// (RSA) or fixed-size coordinates (P-256): what a JWK carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PublicKey {
    Rsa { n: Vec<u8>, e: Vec<u8> },
    P256 { x: Vec<u8>, y: Vec<u8> },
}

/// The parts of an RSA private key (a JWK's `n`, `e`, `d`, `p`, `q`, `dp`,
/// `dq`, `qi`), unsigned big-endian.
pub(crate) struct RsaParts<'a> {
    pub(crate) n: &'a [u8],
    pub(crate) e: &'a [u8],
    pub(crate) d: &'a [u8],
    pub(crate) p: &'a [u8],
    pub(crate) q: &'a [u8],
    pub(crate) dp: &'a [u8],
    pub(crate) dq: &'a [u8],
    pub(crate) qi: &'a [u8],
}

/// `bytes` without its leading zero bytes.
fn minimal(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// A SEC1 `ECPrivateKey` (RFC 5915) wrapped in a PKCS#8 `PrivateKeyInfo`
/// (RFC 5208) for P-256, the one form both backends load: version 0, the
/// algorithm `id-ecPublicKey` with the curve `prime256v1`, and the SEC1
/// bytes in an OCTET STRING. The backend then checks the SEC1 key itself.
fn p256_sec1_to_pkcs8(sec1: &[u8]) -> Result<Zeroizing<Vec<u8>>, Rejected> {
    const VERSION: [u8; 3] = [0x02, 0x01, 0x00];
    const ALGORITHM: [u8; 21] = [
        0x30, 0x13, // SEQUENCE
        0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, // 1.2.840.10045.2.1
        0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, // 1.2.840.10045.3.1.7
    ];
    let mut octets = Zeroizing::new(Vec::with_capacity(sec1.len() + 4));
    octets.push(0x04);
    der_length(&mut octets, sec1.len())?;
    octets.extend_from_slice(sec1);
    let body = VERSION.len() + ALGORITHM.len() + octets.len();
    let mut der = Zeroizing::new(Vec::with_capacity(body + 4));
    der.push(0x30);
    der_length(&mut der, body)?;
    der.extend_from_slice(&VERSION);
    der.extend_from_slice(&ALGORITHM);
    der.extend_from_slice(&octets);
    Ok(der)
}

/// Appends a DER definite length (X.690 §8.1.3); a P-256 key never needs
/// more than two bytes of it.
fn der_length(out: &mut Vec<u8>, len: usize) -> Result<(), Rejected> {
    match len {
        0..=0x7f => out.push(len as u8),
        0x80..=0xff => out.extend_from_slice(&[0x81, len as u8]),
        0x100..=0xffff => out.extend_from_slice(&[0x82, (len >> 8) as u8, len as u8]),
        _ => return Err(Rejected::Invalid),
    }
    Ok(())
}

/// The backend's signature: ECDSA's stays on the stack, RSA's is as long as
/// the modulus.
pub(crate) enum Signature<S> {
    Ecdsa(S),
    Rsa(Vec<u8>),
}

impl<S: AsRef<[u8]>> AsRef<[u8]> for Signature<S> {
    fn as_ref(&self) -> &[u8] {
        match self {
            Self::Ecdsa(signature) => signature.as_ref(),
            Self::Rsa(signature) => signature,
        }
    }
}

/// The backend-neutral code, compiled once per backend inside a module that
/// names the backend `lib` and defines `ecdsa_from_pkcs8` and
/// `ecdsa_from_parts` (the two calls whose arguments differ).
macro_rules! signing_key {
    () => {
        use lib::{
            error::KeyRejected,
            rand::SystemRandom,
            signature::{
                EcdsaKeyPair, KeyPair as _, RsaEncoding, RsaKeyPair, RsaPublicKeyComponents,
                ECDSA_P256_SHA256_FIXED_SIGNING, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256,
                RSA_PSS_2048_8192_SHA256, RSA_PSS_SHA256,
            },
        };

        use super::{minimal, PublicKey, Rejected, RsaPadding, RsaParts};

        /// A key that signs JWS signing inputs. Holds the key pair only:
        /// no `Debug`, nothing printable.
        pub(crate) struct SigningKey(Inner);

        enum Inner {
            Rsa(RsaKeyPair, RsaPadding),
            P256(EcdsaKeyPair),
        }

        impl From<KeyRejected> for Rejected {
            fn from(rejected: KeyRejected) -> Self {
                // Both backends display the kind of the rejection by name.
                match rejected.to_string().as_str() {
                    "TooSmall" => Rejected::TooSmall,
                    "TooLarge" => Rejected::TooLarge,
                    _ => Rejected::Invalid,
                }
            }
        }

        impl SigningKey {
            /// An RSA key from PKCS#8 DER (`BEGIN PRIVATE KEY`).
            pub(crate) fn rsa_pkcs8(der: &[u8], padding: RsaPadding) -> Result<Self, Rejected> {
                Self::rsa(RsaKeyPair::from_pkcs8(der)?, padding)
            }

            /// An RSA key from PKCS#1 DER (`BEGIN RSA PRIVATE KEY`).
            pub(crate) fn rsa_pkcs1(der: &[u8], padding: RsaPadding) -> Result<Self, Rejected> {
                Self::rsa(RsaKeyPair::from_der(der)?, padding)
            }

            /// An RSA key from its parts, the CRT ones included.
            pub(crate) fn rsa_parts(
                parts: &RsaParts<'_>,
                padding: RsaPadding,
            ) -> Result<Self, Rejected> {
                let components = lib::rsa::KeyPairComponents {
                    public_key: RsaPublicKeyComponents {
                        n: minimal(parts.n),
                        e: minimal(parts.e),
                    },
                    d: minimal(parts.d),
                    p: minimal(parts.p),
                    q: minimal(parts.q),
                    dP: minimal(parts.dp),
                    dQ: minimal(parts.dq),
                    qInv: minimal(parts.qi),
                };
                Self::rsa(RsaKeyPair::from_components(&components)?, padding)
            }

            /// Checks what the backends leave for the first signature (ring
            /// checks `dP`, `dQ` against `e` only then): a key that cannot
            /// make a signature its public key verifies is refused here, at
            /// load time, not at the first token request.
            fn rsa(pair: RsaKeyPair, padding: RsaPadding) -> Result<Self, Rejected> {
                if pair.public_key().modulus_len() < 256 {
                    return Err(Rejected::TooSmall);
                }
                let key = Self(Inner::Rsa(pair, padding));
                let probe = b"tower-oauth2 key check";
                let signature = key.sign(probe)?;
                if !verify(
                    &key.public(),
                    padding_name(padding),
                    probe,
                    signature.as_ref(),
                ) {
                    return Err(Rejected::Invalid);
                }
                Ok(key)
            }

            /// A P-256 key from PKCS#8 DER (`BEGIN PRIVATE KEY`).
            pub(crate) fn p256_pkcs8(der: &[u8]) -> Result<Self, Rejected> {
                Ok(Self(Inner::P256(ecdsa_from_pkcs8(der)?)))
            }

            /// A new random P-256 key (for a DPoP key that lives as long as
            /// the process).
            #[cfg_attr(not(dpop), allow(dead_code))]
            pub(crate) fn generate_p256() -> Result<Self, Rejected> {
                let pkcs8 = EcdsaKeyPair::generate_pkcs8(
                    &ECDSA_P256_SHA256_FIXED_SIGNING,
                    &SystemRandom::new(),
                )
                .map_err(|_| Rejected::Invalid)?;
                Self::p256_pkcs8(pkcs8.as_ref())
            }

            /// A P-256 key from SEC1 DER (`BEGIN EC PRIVATE KEY`).
            pub(crate) fn p256_sec1(der: &[u8]) -> Result<Self, Rejected> {
                Self::p256_pkcs8(&super::p256_sec1_to_pkcs8(der)?)
            }

            /// A P-256 key from its scalar `d` and its public point `x`, `y`
            /// (32 bytes each), which must belong together.
            pub(crate) fn p256_parts(d: &[u8], x: &[u8], y: &[u8]) -> Result<Self, Rejected> {
                if d.len() != 32 || x.len() != 32 || y.len() != 32 {
                    return Err(Rejected::Invalid);
                }
                let mut point = [4u8; 65];
                point[1..33].copy_from_slice(x);
                point[33..].copy_from_slice(y);
                Ok(Self(Inner::P256(ecdsa_from_parts(d, &point)?)))
            }

            /// The JWS signature of `message`.
            pub(crate) fn sign(
                &self,
                message: &[u8],
            ) -> Result<super::Signature<lib::signature::Signature>, Rejected> {
                let rng = SystemRandom::new();
                match &self.0 {
                    Inner::Rsa(pair, padding) => {
                        let encoding: &'static dyn RsaEncoding = match padding {
                            RsaPadding::Pkcs1 => &RSA_PKCS1_SHA256,
                            RsaPadding::Pss => &RSA_PSS_SHA256,
                        };
                        let mut signature = vec![0; pair.public_key().modulus_len()];
                        pair.sign(encoding, &rng, message, &mut signature)
                            .map_err(|_| Rejected::Invalid)?;
                        Ok(super::Signature::Rsa(signature))
                    }
                    Inner::P256(pair) => pair
                        .sign(&rng, message)
                        .map(super::Signature::Ecdsa)
                        .map_err(|_| Rejected::Invalid),
                }
            }

            /// The public numbers, as a JWK carries them.
            pub(crate) fn public(&self) -> PublicKey {
                match &self.0 {
                    Inner::Rsa(pair, _) => {
                        let parts = RsaPublicKeyComponents::<Vec<u8>>::from(pair.public_key());
                        PublicKey::Rsa {
                            n: minimal(&parts.n).to_vec(),
                            e: minimal(&parts.e).to_vec(),
                        }
                    }
                    Inner::P256(pair) => {
                        // The uncompressed point: 0x04, x, y.
                        let point = pair.public_key().as_ref();
                        PublicKey::P256 {
                            x: point.get(1..33).unwrap_or_default().to_vec(),
                            y: point.get(33..65).unwrap_or_default().to_vec(),
                        }
                    }
                }
            }
        }

        /// The JWS algorithm name of an RSA padding.
        fn padding_name(padding: RsaPadding) -> &'static str {
            match padding {
                RsaPadding::Pkcs1 => "RS256",
                RsaPadding::Pss => "PS256",
            }
        }

        /// Whether `signature` is `alg`'s (`RS256`, `PS256`, `ES256`) over
        /// `message` by the holder of `public`.
        pub(crate) fn verify(
            public: &PublicKey,
            alg: &str,
            message: &[u8],
            signature: &[u8],
        ) -> bool {
            match (public, alg) {
                (PublicKey::Rsa { n, e }, "RS256" | "PS256") => {
                    let algorithm = if alg == "RS256" {
                        &RSA_PKCS1_2048_8192_SHA256
                    } else {
                        &RSA_PSS_2048_8192_SHA256
                    };
                    RsaPublicKeyComponents { n, e }
                        .verify(algorithm, message, signature)
                        .is_ok()
                }
                (PublicKey::P256 { x, y }, "ES256") => {
                    let point = [&[4u8][..], x, y].concat();
                    lib::signature::UnparsedPublicKey::new(
                        &lib::signature::ECDSA_P256_SHA256_FIXED,
                        point,
                    )
                    .verify(message, signature)
                    .is_ok()
                }
                _ => false,
            }
        }

        #[cfg(test)]
        mod tests {
            use super::*;

            const RSA_PKCS8: &str = include_str!("../tests/keys/rsa.pem");
            const RSA_PKCS1: &str = include_str!("../tests/keys/rsa-pkcs1.pem");
            const RSA_1024: &str = include_str!("../tests/keys/rsa-1024.pem");
            const EC_PKCS8: &str = include_str!("../tests/keys/ec.pem");
            const EC_SEC1: &str = include_str!("../tests/keys/ec-sec1.pem");

            /// The DER inside a fixture's one PEM block.
            fn der(pem: &str) -> Vec<u8> {
                use base64::Engine as _;
                let body: String = pem
                    .lines()
                    .filter(|line| !line.starts_with("-----"))
                    .collect();
                base64::engine::general_purpose::STANDARD
                    .decode(body)
                    .unwrap()
            }

            #[test]
            fn every_form_signs_and_verifies() {
                let keys = [
                    (
                        "RS256",
                        SigningKey::rsa_pkcs8(&der(RSA_PKCS8), RsaPadding::Pkcs1),
                    ),
                    (
                        "RS256",
                        SigningKey::rsa_pkcs1(&der(RSA_PKCS1), RsaPadding::Pkcs1),
                    ),
                    (
                        "PS256",
                        SigningKey::rsa_pkcs8(&der(RSA_PKCS8), RsaPadding::Pss),
                    ),
                    (
                        "PS256",
                        SigningKey::rsa_pkcs1(&der(RSA_PKCS1), RsaPadding::Pss),
                    ),
                    ("ES256", SigningKey::p256_pkcs8(&der(EC_PKCS8))),
                    ("ES256", SigningKey::p256_sec1(&der(EC_SEC1))),
                ];
                for (i, (alg, key)) in keys.into_iter().enumerate() {
                    let key = key.unwrap_or_else(|e| panic!("key {i}: {e:?}"));
                    let signature = key.sign(b"header.claims").unwrap();
                    let public = key.public();
                    assert!(
                        verify(&public, alg, b"header.claims", signature.as_ref()),
                        "{i}"
                    );
                    assert!(
                        !verify(&public, alg, b"header.claimz", signature.as_ref()),
                        "{i}"
                    );
                    if alg == "ES256" {
                        assert_eq!(signature.as_ref().len(), 64, "r || s");
                    }
                }
                // PS256 signatures are randomized, RS256 ones are not.
                let rsa = SigningKey::rsa_pkcs8(&der(RSA_PKCS8), RsaPadding::Pss).unwrap();
                assert_ne!(
                    rsa.sign(b"m").unwrap().as_ref(),
                    rsa.sign(b"m").unwrap().as_ref()
                );
                let rsa = SigningKey::rsa_pkcs8(&der(RSA_PKCS8), RsaPadding::Pkcs1).unwrap();
                assert_eq!(
                    rsa.sign(b"m").unwrap().as_ref(),
                    rsa.sign(b"m").unwrap().as_ref()
                );
            }

            #[test]
            fn generated_p256_keys_sign_and_differ() {
                let a = SigningKey::generate_p256().unwrap();
                let b = SigningKey::generate_p256().unwrap();
                assert_ne!(a.public(), b.public());
                let signature = a.sign(b"m").unwrap();
                assert_eq!(signature.as_ref().len(), 64);
                assert!(verify(&a.public(), "ES256", b"m", signature.as_ref()));
            }

            #[test]
            fn refusals() {
                let pkcs1 = RsaPadding::Pkcs1;
                assert_eq!(
                    SigningKey::rsa_pkcs8(&der(RSA_1024), pkcs1).err(),
                    Some(Rejected::TooSmall)
                );
                assert!(SigningKey::rsa_pkcs8(&der(EC_PKCS8), pkcs1).is_err());
                assert!(SigningKey::rsa_pkcs1(&der(RSA_PKCS8), pkcs1).is_err());
                assert!(SigningKey::p256_pkcs8(&der(RSA_PKCS8)).is_err());
                assert!(SigningKey::p256_sec1(&der(EC_PKCS8)).is_err());
                assert!(SigningKey::p256_sec1(&der(RSA_PKCS1)).is_err());
                assert!(SigningKey::p256_sec1(&[]).is_err());
                assert!(SigningKey::p256_sec1(&vec![0x30; 70_000]).is_err());
                assert!(SigningKey::p256_parts(&[1; 32], &[2; 32], &[3; 32]).is_err());
                assert!(SigningKey::p256_parts(&[1; 31], &[2; 32], &[3; 32]).is_err());
            }
        }
    };
}

/// aws-lc-rs: what `reqwest`'s rustls already compiles.
#[cfg(feature = "aws-lc-rs")]
mod aws_lc {
    use aws_lc_rs as lib;

    signing_key!();

    fn ecdsa_from_pkcs8(der: &[u8]) -> Result<EcdsaKeyPair, KeyRejected> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der)
    }

    fn ecdsa_from_parts(d: &[u8], point: &[u8]) -> Result<EcdsaKeyPair, KeyRejected> {
        EcdsaKeyPair::from_private_key_and_public_key(&ECDSA_P256_SHA256_FIXED_SIGNING, d, point)
    }
}

/// ring: no C library to build beyond its own small one. Compiled beside
/// aws-lc-rs only for its tests.
#[cfg(all(feature = "ring", any(test, not(feature = "aws-lc-rs"))))]
#[cfg_attr(feature = "aws-lc-rs", allow(dead_code))]
mod ring {
    use ::ring as lib;

    signing_key!();

    fn ecdsa_from_pkcs8(der: &[u8]) -> Result<EcdsaKeyPair, KeyRejected> {
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der, &SystemRandom::new())
    }

    fn ecdsa_from_parts(d: &[u8], point: &[u8]) -> Result<EcdsaKeyPair, KeyRejected> {
        EcdsaKeyPair::from_private_key_and_public_key(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            d,
            point,
            &SystemRandom::new(),
        )
    }
}

#[cfg(all(test, not(feature = "aws-lc-rs")))]
pub(crate) use self::ring::verify;
#[cfg(not(feature = "aws-lc-rs"))]
pub(crate) use self::ring::SigningKey;
#[cfg(all(test, feature = "aws-lc-rs"))]
pub(crate) use aws_lc::verify;
#[cfg(feature = "aws-lc-rs")]
pub(crate) use aws_lc::SigningKey;
