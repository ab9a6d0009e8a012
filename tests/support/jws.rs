//! Checks a compact JWS against a public JWK with ring, whatever backend the
//! crate signed with (aws-lc-rs in the default test build): what an
//! authorization server does with the key the client registered.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
use ring::signature::{
    RsaPublicKeyComponents, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED, RSA_PKCS1_2048_8192_SHA256,
    RSA_PSS_2048_8192_SHA256,
};
use serde_json::Value;

/// The header and claims of `jws` if its signature verifies with the public
/// key in `jwk` (RS256, PS256 or ES256, as its header says); why not if not.
pub fn verify(jws: &str, jwk: &str) -> Result<(Value, Value), String> {
    let parts: Vec<&str> = jws.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err(format!("not a compact JWS: {jws}"));
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|e| e.to_string());
    let json = |part: &str| -> Result<Value, String> {
        serde_json::from_slice(&decode(part)?).map_err(|e| e.to_string())
    };
    let (header_json, claims_json) = (json(header)?, json(claims)?);
    let signature = decode(signature)?;
    let input = format!("{header}.{claims}");
    let jwk: Value = serde_json::from_str(jwk).map_err(|e| e.to_string())?;
    let member = |name: &str| {
        jwk[name]
            .as_str()
            .ok_or(format!("the JWK has no `{name}`"))
            .and_then(decode)
    };
    let verified = match header_json["alg"].as_str() {
        Some(alg @ ("RS256" | "PS256")) => {
            let algorithm = if alg == "RS256" {
                &RSA_PKCS1_2048_8192_SHA256
            } else {
                &RSA_PSS_2048_8192_SHA256
            };
            RsaPublicKeyComponents {
                n: member("n")?,
                e: member("e")?,
            }
            .verify(algorithm, input.as_bytes(), &signature)
        }
        Some("ES256") => {
            let point = [vec![4], member("x")?, member("y")?].concat();
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
                .verify(input.as_bytes(), &signature)
        }
        other => return Err(format!("unexpected alg {other:?}")),
    };
    verified.map_err(|_| "the signature does not verify".to_owned())?;
    Ok((header_json, claims_json))
}
