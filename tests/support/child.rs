//! Real child processes for the crash and fleet tests: this test binary
//! again, running one of its ignored tests, with its settings in the
//! environment. Killed when dropped.

use std::{ffi::OsStr, process::Stdio};

use tokio::process::{Child, Command};

/// Starts the ignored test `test` of this binary in a process of its own,
/// with `env`; its stdout is piped, its stderr dropped.
pub fn spawn<K, V>(test: &str, env: impl IntoIterator<Item = (K, V)>) -> Child
where
    K: AsRef<OsStr>,
    V: AsRef<OsStr>,
{
    Command::new(std::env::current_exe().unwrap())
        .args([test, "--exact", "--ignored", "--nocapture", "--quiet"])
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}
