//! Debian packages the tests need, installed on first use when they are
//! missing and the tests run as root (as CI and a fresh machine do);
//! otherwise the test fails and says which command installs them.

use std::{
    io::Write as _,
    process::{Command, Stdio},
    sync::Mutex,
};

/// Makes sure `package` is installed, as `present` tells: installs it with
/// `apt-get` when it is not and we are root. Fails the test, saying what
/// `needed_by` needs, when it is still missing.
pub fn ensure(package: &str, needed_by: &str, present: impl Fn() -> bool) {
    // One installation at a time in this process.
    static INSTALLING: Mutex<()> = Mutex::new(());
    let _one = INSTALLING.lock().unwrap_or_else(|e| e.into_inner());
    if present() {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0"));
    let apt = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if root {
        let _ = writeln!(std::io::stderr(), "installing {package} (apt-get)");
        if !apt(&["install", "-y", "-q", package]) {
            apt(&["update", "-q"]);
            apt(&["install", "-y", "-q", package]);
        }
    }
    assert!(
        present(),
        "{needed_by} need {package}, which is not installed \
         (on Debian, as root: `apt-get install {package}`)"
    );
}
