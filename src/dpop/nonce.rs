//! The last `DPoP-Nonce` each origin gave (RFC 9449 §8 and §9), bounded.

use std::sync::{Arc, Mutex};

use http::HeaderValue;

/// How many origins a key remembers a nonce for; the least recently told
/// one is forgotten first. A client calls a handful of APIs: the bound keeps
/// a server that invents origins from growing the table.
pub(crate) const MAX_ORIGINS: usize = 64;

/// Longest nonce kept, in bytes: longer ones are ignored.
const MAX_NONCE_LEN: usize = 1024;

/// Nonces by origin (`scheme://authority`), most recent first.
#[derive(Default)]
pub(crate) struct Nonces {
    entries: Mutex<Vec<(Box<str>, Arc<str>)>>,
}

impl Nonces {
    /// The nonce `origin` gave last, if any.
    pub(crate) fn get(&self, origin: &str) -> Option<Arc<str>> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries
            .iter()
            .find(|(o, _)| &**o == origin)
            .map(|(_, nonce)| nonce.clone())
    }

    /// Remembers the `DPoP-Nonce` header value `value` for `origin`. Returns
    /// whether it is new for that origin. A value that is not a valid nonce
    /// (RFC 9449 §8.1: `1*NQCHAR`, printable ASCII but `"` and `\`) is ignored.
    pub(crate) fn remember(&self, origin: &str, value: &HeaderValue) -> bool {
        let bytes = value.as_bytes();
        if bytes.is_empty()
            || bytes.len() > MAX_NONCE_LEN
            || !bytes
                .iter()
                .all(|&b| (0x21..=0x7e).contains(&b) && b != b'"' && b != b'\\')
        {
            return false;
        }
        // Checked above: ASCII.
        let Ok(text) = std::str::from_utf8(bytes) else {
            return false;
        };
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.iter().position(|(o, _)| &**o == origin) {
            Some(0) if &*entries[0].1 == text => false,
            Some(at) => {
                let fresh = &*entries[at].1 != text;
                entries.remove(at);
                entries.insert(0, (origin.into(), text.into()));
                fresh
            }
            None => {
                if entries.len() >= MAX_ORIGINS {
                    entries.pop();
                }
                entries.insert(0, (origin.into(), text.into()));
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_per_origin_bounded() {
        let nonces = Nonces::default();
        assert!(nonces.get("https://a").is_none());
        assert!(nonces.remember("https://a", &HeaderValue::from_static("n1")));
        assert!(!nonces.remember("https://a", &HeaderValue::from_static("n1")));
        assert!(nonces.remember("https://b", &HeaderValue::from_static("m1")));
        assert!(nonces.remember("https://a", &HeaderValue::from_static("n2")));
        assert_eq!(nonces.get("https://a").as_deref(), Some("n2"));
        assert_eq!(nonces.get("https://b").as_deref(), Some("m1"));
        assert!(!nonces.remember("https://a", &HeaderValue::from_static("a\"b")));
        assert_eq!(nonces.get("https://a").as_deref(), Some("n2"));
        for i in 0..MAX_ORIGINS + 10 {
            nonces.remember(&format!("https://h{i}"), &HeaderValue::from_static("x"));
        }
        assert!(nonces.get("https://a").is_none(), "oldest forgotten");
        assert_eq!(nonces.entries.lock().unwrap().len(), MAX_ORIGINS, "bounded");
    }
}
