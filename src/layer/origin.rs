//! Which cache (if any) serves a request, by the request's origin.

use std::{
    fmt,
    hash::{Hash, Hasher},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

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

    /// `scheme://host[:port]`, the port only when not the scheme's default:
    /// what a DPoP proof's `htu` starts with for a relative URI.
    #[cfg(dpop)]
    pub(crate) fn prefix(&self) -> String {
        let (scheme, default_port) = if self.https {
            ("https", 443)
        } else {
            ("http", 80)
        };
        if self.port == default_port {
            format!("{scheme}://{}", self.host)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// Where a request to this origin goes, as if its URI were absolute.
    fn target(&self) -> Target<'_> {
        Target {
            scheme: if self.https { "https" } else { "http" },
            host: &self.host,
            port: Some(self.port),
        }
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

impl fmt::Display for Target<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.scheme, self.host)?;
        match self.port {
            Some(port) => write!(f, ":{port}"),
            None => Ok(()),
        }
    }
}

/// The routing table: which cache, by index, serves which origin, and which
/// serves every other origin (`fallback`), if any.
#[derive(Clone, Debug, Default)]
pub(crate) struct Routes {
    pub(crate) routes: Vec<(Origin, usize)>,
    pub(crate) fallback: Option<usize>,
    /// The origin of requests whose URI is only a path (tonic's generated
    /// clients send `/package.Service/Method` to their channel).
    pub(crate) relative: Option<Origin>,
    /// Requests that left without a token: shared by every service the
    /// layer makes.
    pub(crate) withheld: Arc<Withheld>,
}

impl Routes {
    /// The index of the cache for a request to `target` (`None`: a request
    /// without an absolute URI).
    pub(crate) fn pick(&self, target: Option<Target<'_>>) -> Option<usize> {
        if self.routes.is_empty() {
            return self.fallback;
        }
        let Some(target) = target.or_else(|| self.relative.as_ref().map(Origin::target)) else {
            return self.fallback;
        };
        self.routes
            .iter()
            .find(|(origin, _)| origin.matches(&target))
            .map(|(_, index)| *index)
            .or(self.fallback)
    }

    /// [`pick`](Self::pick), telling [`Withheld`] when no cache serves the
    /// request.
    #[inline]
    pub(crate) fn pick_or_note(&self, target: Option<Target<'_>>) -> Option<usize> {
        let picked = self.pick(target);
        if picked.is_none() {
            self.withheld.note(target);
        }
        picked
    }
}

/// How many origins a layer names in its logs: a client that calls any
/// number of hosts cannot grow the table without bound.
const LOGGED_ORIGINS: usize = 32;

/// Requests a layer sent on without a token because no cache serves their
/// origin: counted, and logged once per origin, so a token withheld by
/// mistake (a gRPC channel's relative URIs, a typo in an origin) is never
/// silent.
#[derive(Debug, Default)]
pub(crate) struct Withheld {
    count: AtomicU64,
    /// Hashes of the origins logged so far (0: a free slot); read without
    /// a lock, filled by compare-and-swap.
    logged: [AtomicU64; LOGGED_ORIGINS],
}

impl Withheld {
    pub(crate) fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    #[cold]
    pub(crate) fn note(&self, target: Option<Target<'_>>) {
        self.count.fetch_add(1, Ordering::Relaxed);
        crate::metrics::withheld(target.is_none());
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match &target {
            Some(target) => {
                target.scheme.to_ascii_lowercase().hash(&mut hasher);
                target.host.to_ascii_lowercase().hash(&mut hasher);
                target.port.hash(&mut hasher);
            }
            None => "relative".hash(&mut hasher),
        }
        let hash = hasher.finish().max(1);
        for slot in &self.logged {
            match slot.compare_exchange(0, hash, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => break,
                Err(seen) if seen == hash => return,
                Err(_) => {}
            }
        }
        match target {
            None => tracing::warn!(
                target: "tower_oauth2",
                "a request whose URI has no origin (a path only, as a gRPC channel's) was sent \
                 without a token: the layer only sends it to the origins it was given; \
                 tell it where such requests go with `relative_uri_origin`"
            ),
            Some(target) => tracing::info!(
                target: "tower_oauth2",
                origin = %target,
                "a request to an origin no token cache serves was sent without a token \
                 (logged once per origin)"
            ),
        }
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
            ..Routes::default()
        };
        assert_eq!(only_listed.pick(target("https://a.example.com/x")), Some(0));
        assert_eq!(only_listed.pick(target("http://127.0.0.1:8080/")), Some(1));
        assert_eq!(only_listed.pick(target("https://c.example.com/")), None);
        assert_eq!(only_listed.pick(None), None);
        let with_fallback = Routes {
            routes: vec![(b.clone(), 1)],
            fallback: Some(0),
            ..Routes::default()
        };
        assert_eq!(
            with_fallback.pick(target("https://c.example.com/")),
            Some(0)
        );
        assert_eq!(with_fallback.pick(None), Some(0));
        let everyone = Routes {
            routes: Vec::new(),
            fallback: Some(0),
            ..Routes::default()
        };
        assert_eq!(everyone.pick(None), Some(0));
        let grpc = Routes {
            routes: vec![(a, 0), (b.clone(), 1)],
            relative: Some(b),
            ..Routes::default()
        };
        assert_eq!(
            grpc.pick(None),
            Some(1),
            "a path goes to the channel's origin"
        );
        assert_eq!(grpc.pick(target("https://a.example.com/")), Some(0));
    }

    #[test]
    fn withheld_requests_are_counted_and_each_origin_logged_once() {
        let withheld = Withheld::default();
        let logged = |w: &Withheld| {
            w.logged
                .iter()
                .filter(|s| s.load(Ordering::Relaxed) != 0)
                .count()
        };
        for uri in [
            "https://c.example.com/1",
            "https://C.example.com/2",
            "http://c.example.com/",
        ] {
            withheld.note(target(uri));
        }
        withheld.note(None);
        withheld.note(None);
        assert_eq!(withheld.count(), 5);
        assert_eq!(logged(&withheld), 3, "c over https, c over http, relative");
        for i in 0..100 {
            withheld.note(target(Box::leak(
                format!("https://h{i}.example.com/").into_boxed_str(),
            )));
        }
        assert_eq!(withheld.count(), 105);
        assert_eq!(logged(&withheld), LOGGED_ORIGINS, "bounded");
    }
}
