//! A system clock the test steps while a child process runs: libfaketime
//! preloaded into the child, its offset read from a file on every call
//! (no caching), the monotonic clock left alone, as when NTP steps the
//! clock or a machine resumes. Installed with Debian's `faketime` package
//! on first use when it is missing and the tests run as root; otherwise
//! the tests fail, saying how to install it.

use std::path::PathBuf;

/// The offset file of one child's clock; the child's clock starts right.
pub struct SteppedClock {
    dir: tempfile::TempDir,
    file: PathBuf,
    library: PathBuf,
}

impl SteppedClock {
    pub fn new() -> SteppedClock {
        let library = install();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("offset");
        let clock = SteppedClock { dir, file, library };
        clock.set(0);
        clock
    }

    /// Sets the child's clock `seconds` away from the real one, at once.
    /// Written aside and renamed, so the child never reads half a line.
    pub fn set(&self, seconds: i64) {
        let next = self.dir.path().join("offset.next");
        std::fs::write(&next, format!("{seconds:+}\n")).unwrap();
        std::fs::rename(&next, &self.file).unwrap();
    }

    /// The environment that puts a child process on this clock.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("LD_PRELOAD", self.library.display().to_string()),
            ("FAKETIME_TIMESTAMP_FILE", self.file.display().to_string()),
            ("FAKETIME_NO_CACHE", "1".into()),
            ("FAKETIME_DONT_FAKE_MONOTONIC", "1".into()),
        ]
    }
}

/// The preloadable library (the thread-safe build), if installed.
fn library() -> Option<PathBuf> {
    let mut dirs = vec![
        PathBuf::from("/usr/lib/faketime"),
        PathBuf::from("/usr/local/lib/faketime"),
    ];
    if let Ok(entries) = std::fs::read_dir("/usr/lib") {
        dirs.extend(entries.flatten().map(|e| e.path().join("faketime")));
    }
    dirs.into_iter()
        .map(|dir| dir.join("libfaketimeMT.so.1"))
        .find(|path| path.is_file())
}

/// Installs Debian's `faketime` if it is missing and we may.
fn install() -> PathBuf {
    super::apt::ensure("faketime", "the clock tests", || library().is_some());
    library().expect("installed")
}
