//! A real `redis-server` on a free loopback port, for the fleet and chaos
//! tests: killed (SIGKILL, nothing saved) and started again on the same
//! port, empty or from an older RDB snapshot, as a Redis without persistence
//! or one restored from a backup comes back. Installed with Debian's package
//! on first use when it is missing and the tests run as root; otherwise the
//! tests fail, saying how to install it.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// The file Redis loads at start and `SAVE` writes, in the server's directory.
const DUMP: &str = "dump.rdb";

/// A running `redis-server`; killed on drop.
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    /// Its working directory: `dump.rdb` and the snapshots set aside.
    dir: tempfile::TempDir,
    snapshots: u32,
    pub url: String,
}

/// A copy of the server's data as `SAVE` wrote it at some moment.
#[derive(Debug, Clone)]
pub struct Snapshot {
    path: PathBuf,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        install();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut server = RedisServer {
            child: None,
            port,
            dir: tempfile::tempdir().unwrap(),
            snapshots: 0,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        server.restart();
        server
    }

    /// Where it listens (the same across restarts).
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// Whether it was started and not stopped since.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Stops the server with SIGKILL, as a crash would: no shutdown, nothing
    /// saved.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it (SIGKILL) and starts it again on the same port, empty: a
    /// Redis without persistence after a crash.
    pub fn restart(&mut self) {
        self.stop();
        let _ = std::fs::remove_file(self.dir.path().join(DUMP));
        self.launch();
    }

    /// Writes the data to disk now (`SAVE`) and sets that copy aside.
    pub fn snapshot(&mut self) -> Snapshot {
        let mut stream = TcpStream::connect(self.addr()).expect("redis-server is running");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = [0u8; 5];
        stream.write_all(b"SAVE\r\n").unwrap();
        stream.read_exact(&mut answer).unwrap();
        assert_eq!(&answer, b"+OK\r\n", "SAVE failed");
        self.snapshots += 1;
        let path = self
            .dir
            .path()
            .join(format!("snapshot-{}.rdb", self.snapshots));
        std::fs::copy(self.dir.path().join(DUMP), &path).unwrap();
        Snapshot { path }
    }

    /// Kills it (SIGKILL) and starts it again on the same port with the data
    /// of `snapshot`: a restore from a backup, or a restart that loads an
    /// RDB file older than the last writes.
    pub fn restart_from(&mut self, snapshot: &Snapshot) {
        self.stop();
        std::fs::copy(&snapshot.path, self.dir.path().join(DUMP)).unwrap();
        self.launch();
    }

    /// Starts the server on its port, loading `dump.rdb` if there is one,
    /// and waits until it answers.
    fn launch(&mut self) {
        assert!(self.child.is_none(), "redis-server is running already");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(["--dbfilename", DUMP])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let mut answer = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut answer).is_ok()
            && &answer == b"+PONG\r\n"
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Installs Debian's `redis-server` if it is missing and we may.
fn install() {
    super::apt::ensure("redis-server", "the fleet tests", installed);
}
