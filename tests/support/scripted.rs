//! A scripted token source for tests: answers from a script, after an
//! optional latency, counts its calls, and panics when called past the end
//! of a finite script. Shared by the cache and layer tests.
#![allow(dead_code)]

use std::{
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use tokio::time::{sleep, Instant};
use tower_oauth2::{Error, StoreKey, Token, TokenSource};

/// What the scripted source answers to its n-th call (1-based).
pub enum Reply {
    Token(Option<Duration>),
    Fail(Error),
}

/// A token source that answers from a script, after `latency`, and counts
/// its calls. A call past the end of a finite script panics (and is counted,
/// so tests that check the count notice it).
#[derive(Clone)]
pub struct Scripted {
    script: Arc<Mutex<dyn FnMut(usize) -> Reply + Send>>,
    pub calls: Arc<AtomicUsize>,
    pub completed: Arc<AtomicUsize>,
    latency: Duration,
    pub dropped: Arc<AtomicBool>,
}

impl Scripted {
    pub fn new(script: impl FnMut(usize) -> Reply + Send + 'static) -> Self {
        Self {
            script: Arc::new(Mutex::new(script)),
            calls: Arc::default(),
            completed: Arc::default(),
            latency: Duration::ZERO,
            dropped: Arc::default(),
        }
    }

    /// Answers these replies in order, then panics.
    pub fn exactly(replies: Vec<Reply>) -> Self {
        let mut replies = replies.into_iter();
        Self::new(move |n| {
            replies
                .next()
                .unwrap_or_else(|| panic!("token source called {n} times, more than scripted"))
        })
    }

    /// Always hands out tokens of `lifetime`.
    pub fn tokens(lifetime: Duration) -> Self {
        Self::new(move |_| Reply::Token(Some(lifetime)))
    }

    pub fn latency(mut self, latency: Duration) -> Self {
        self.latency = latency;
        self
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// A token source answering from this script; clones share the script.
    pub fn source(&self) -> Source {
        Source(self.clone())
    }
}

/// The [`TokenSource`] half of a [`Scripted`]; dropping it marks the script.
pub struct Source(Scripted);

impl TokenSource for Source {
    async fn fetch(&mut self) -> Result<Token, Error> {
        let s = &self.0;
        let sent = Instant::now();
        let n = s.calls.fetch_add(1, Ordering::SeqCst) + 1;
        sleep(s.latency).await;
        let reply = (s.script.lock().unwrap())(n);
        s.completed.fetch_add(1, Ordering::SeqCst);
        match reply {
            Reply::Token(lifetime) => {
                let builder = Token::builder(format!("token-{n}")).issued_at(sent);
                match lifetime {
                    Some(l) => builder.expires_in(l),
                    None => builder,
                }
                .build()
            }
            Reply::Fail(error) => Err(error),
        }
    }

    /// A cache with a store needs one; every script names the same.
    fn store_key(&self) -> Option<StoreKey> {
        Some(StoreKey::new("custom", "", "", &[]))
    }
}

impl Drop for Source {
    fn drop(&mut self) {
        self.0.dropped.store(true, Ordering::SeqCst);
    }
}
