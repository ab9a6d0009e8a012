//! A TCP proxy on loopback in front of another server (a `redis-server`, a
//! token endpoint), told at run time what the network does: pass bytes
//! through, hold the server's replies for a while and deliver them late (a
//! reply that misses the client's timeout although the command was applied),
//! hold the clients' requests before they reach the server, or drop every
//! connection (with whatever it holds). It also keeps the last bytes each client sent, so a test can
//! tell which client wrote a given value (the owner of a lease).

use std::{
    collections::VecDeque,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    time::Instant,
};

/// The client bytes kept, per proxy, most recent last.
const SENT_KEPT: usize = 256 * 1024;

struct Shared {
    /// How long each reply chunk is held from when it arrives.
    delay: Mutex<Duration>,
    sent: Mutex<VecDeque<u8>>,
    connections: Mutex<u64>,
}

/// A running proxy; stops accepting and drops its connections when dropped.
pub struct Proxy {
    shared: Arc<Shared>,
    /// Bumped by [`cut`](Self::cut): every connection open then is dropped.
    cuts: watch::Sender<u64>,
    /// Whether requests (client to server) wait in the proxy.
    held: watch::Sender<bool>,
    accept: tokio::task::JoinHandle<()>,
    pub addr: SocketAddr,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.cuts.send_modify(|n| *n += 1);
    }
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and forwards each connection to `upstream`
    /// (a connection is refused by closing it when `upstream` is down).
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            delay: Mutex::new(Duration::ZERO),
            sent: Mutex::new(VecDeque::new()),
            connections: Mutex::new(0),
        });
        let (cuts, _) = watch::channel(0u64);
        let (held, _) = watch::channel(false);
        let accept = tokio::spawn({
            let shared = shared.clone();
            let cuts = cuts.clone();
            let held = held.clone();
            async move {
                loop {
                    let Ok((client, _)) = listener.accept().await else {
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    *shared.connections.lock().unwrap() += 1;
                    let gates = (cuts.subscribe(), held.subscribe());
                    tokio::spawn(connection(client, upstream, shared.clone(), gates));
                }
            }
        });
        Proxy {
            shared,
            cuts,
            held,
            accept,
            addr,
        }
    }

    /// `redis://` URL of this proxy.
    pub fn redis_url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// Bytes flow both ways as they come. Replies already held keep their
    /// delivery time: they still arrive, late.
    pub fn pass(&self) {
        *self.shared.delay.lock().unwrap() = Duration::ZERO;
        self.held.send_replace(false);
    }

    /// Requests (client to server) wait in the proxy from now on, until
    /// [`pass`](Self::pass) sends them on or [`cut`](Self::cut) drops them:
    /// a request the server never sees, although the client wrote it.
    pub fn hold_requests(&self) {
        self.held.send_replace(true);
    }

    /// Every reply (server to client) that arrives from now on is held for
    /// `delay`, then delivered, in order. Requests still reach the server at
    /// once, so commands are applied while their replies are late.
    pub fn delay_replies(&self, delay: Duration) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Drops every connection open now, with the requests and replies it
    /// holds (the clients see them close); new ones are accepted as before.
    pub fn cut(&self) {
        self.cuts.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> u64 {
        *self.shared.connections.lock().unwrap()
    }

    /// Whether the last bytes clients sent through this proxy contain `needle`.
    pub fn sent_contains(&self, needle: &[u8]) -> bool {
        let mut sent = self.shared.sent.lock().unwrap();
        let sent = sent.make_contiguous();
        !needle.is_empty() && sent.windows(needle.len()).any(|w| w == needle)
    }

    /// Forgets what clients sent so far.
    pub fn forget_sent(&self) {
        self.shared.sent.lock().unwrap().clear();
    }
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    (mut cut, mut held): (watch::Receiver<u64>, watch::Receiver<bool>),
) {
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let requests = {
        let shared = shared.clone();
        async move {
            let mut buffer = vec![0u8; 16 * 1024];
            loop {
                let n = match client_read.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if held.wait_for(|held| !held).await.is_err() {
                    return;
                }
                {
                    let mut sent = shared.sent.lock().unwrap();
                    sent.extend(&buffer[..n]);
                    let excess = sent.len().saturating_sub(SENT_KEPT);
                    sent.drain(..excess);
                }
                if server_write.write_all(&buffer[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    // Replies go through a queue, each with its delivery time, so holding
    // them never stops reading the server (nor the commands behind them).
    let (queue, mut held) = tokio::sync::mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let replies = async move {
        let mut buffer = vec![0u8; 16 * 1024];
        loop {
            let n = match server_read.read(&mut buffer).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let due = Instant::now() + *shared.delay.lock().unwrap();
            if queue.send((due, buffer[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let deliver = async move {
        while let Some((due, bytes)) = held.recv().await {
            tokio::time::sleep_until(due).await;
            if client_write.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    // The reply pump ends when the server closes; what it queued is still
    // delivered before the connection goes.
    let replies = async move {
        tokio::join!(replies, deliver);
    };
    // A cut comes first: a test that cuts and then lets requests pass
    // (dropping what was held) must never see a held request slip through.
    tokio::select! {
        biased;
        _ = cut.changed() => {}
        () = requests => {}
        () = replies => {}
    }
}
