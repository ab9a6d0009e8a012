//! Which cache (if any) serves a request, by the request's origin.

use http::Uri;

use crate::Error;

/// An origin a token may be sent to: `scheme://host:port`, lowercase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Origin {
    https: bool,
    host: Box<str>,
    port: u16,
}

/// Where a request goes, borrowed from it: no allocation per request.
/// (`pub` in a private module: it appears in the sealed request trait.)
#[derive(Clone, Copy, Debug)]
pub struct Target<'a> {
    pub(crate) scheme: &'a str,
    pub(crate) host: &'a str,
    pub(crate) port: Option<u16>,
}

impl Origin {
    /// Parses `scheme://host[:port]` (`http` or `https`, nothing after the
    /// authority but an optional `/`).
    pub(crate) fn parse(text: &str) -> Result<Self, Error> {
        let invalid = || {
            Error::config(format!(
                "`{text}` is not an origin (scheme://host[:port], http or https)"
            ))
        };
        let uri: Uri = text.parse().map_err(|_| invalid())?;
        let path_is_root = matches!(
            uri.path_and_query().map(|p| p.as_str()),
            None | Some("/") | Some("")
        );
        let scheme = uri.scheme_str().ok_or_else(invalid)?;
        let https = if scheme.eq_ignore_ascii_case("https") {
            true
        } else if scheme.eq_ignore_ascii_case("http") {
            false
        } else {
            return Err(invalid());
        };
        let host = uri.host().ok_or_else(invalid)?;
        if !path_is_root {
            return Err(invalid());
        }
        Ok(Self {
            https,
            host: host.to_ascii_lowercase().into(),
            port: uri.port_u16().unwrap_or(if https { 443 } else { 80 }),
        })
    }

    pub(crate) fn matches(&self, target: &Target<'_>) -> bool {
        let (https, default_port) = if target.scheme.eq_ignore_ascii_case("https") {
            (true, 443)
        } else if target.scheme.eq_ignore_ascii_case("http") {
            (false, 80)
        } else {
            return false;
        };
        self.https == https
            && self.port == target.port.unwrap_or(default_port)
            && self.host.eq_ignore_ascii_case(target.host)
    }
}

/// The routing table: which cache, by index, serves which origin, and which
/// serves every other origin (`fallback`), if any.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes {
    pub(crate) routes: Vec<(Origin, usize)>,
    pub(crate) fallback: Option<usize>,
}

impl Routes {
    /// The index of the cache for a request to `target` (`None`: a request
    /// without an absolute URI).
    pub(crate) fn pick(&self, target: Option<Target<'_>>) -> Option<usize> {
        if self.routes.is_empty() {
            return self.fallback;
        }
        let Some(target) = target else {
            return self.fallback;
        };
        self.routes
            .iter()
            .find(|(origin, _)| origin.matches(&target))
            .map(|(_, index)| *index)
            .or(self.fallback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(uri: &'static str) -> Option<Target<'static>> {
        let uri: &'static Uri = Box::leak(Box::new(uri.parse().unwrap()));
        Some(Target {
            scheme: uri.scheme_str()?,
            host: uri.host()?,
            port: uri.port_u16(),
        })
    }

    #[test]
    fn origins_match_by_scheme_host_and_port() {
        let o = Origin::parse("https://API.example.com").unwrap();
        assert!(o.matches(&target("https://api.example.com:443/x?y").unwrap()));
        assert!(o.matches(&target("HTTPS://api.EXAMPLE.com/").unwrap()));
        assert!(!o.matches(&target("http://api.example.com/").unwrap()));
        assert!(!o.matches(&target("https://api.example.com:8443/").unwrap()));
        assert!(target("/relative").is_none());
        assert!(Origin::parse("https://api.example.com/path").is_err());
        assert!(Origin::parse("api.example.com").is_err());
        assert!(Origin::parse("ftp://x").is_err());
    }

    #[test]
    fn routes_pick_a_cache_per_origin() {
        let a = Origin::parse("https://a.example.com").unwrap();
        let b = Origin::parse("http://127.0.0.1:8080").unwrap();
        let only_listed = Routes {
            routes: vec![(a.clone(), 0), (b.clone(), 1)],
            fallback: None,
        };
        assert_eq!(only_listed.pick(target("https://a.example.com/x")), Some(0));
        assert_eq!(only_listed.pick(target("http://127.0.0.1:8080/")), Some(1));
        assert_eq!(only_listed.pick(target("https://c.example.com/")), None);
        assert_eq!(only_listed.pick(None), None);
        let with_fallback = Routes {
            routes: vec![(b, 1)],
            fallback: Some(0),
        };
        assert_eq!(
            with_fallback.pick(target("https://c.example.com/")),
            Some(0)
        );
        assert_eq!(with_fallback.pick(None), Some(0));
        let everyone = Routes {
            routes: Vec::new(),
            fallback: Some(0),
        };
        assert_eq!(everyone.pick(None), Some(0));
    }
}
