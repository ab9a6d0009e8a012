//! A token store in one file, replaced atomically under an advisory lock.

use std::{
    ffi::{OsStr, OsString},
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    path::{Path, PathBuf},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
};

use secrecy::SecretString;

use super::{Expect, Saved, StoreKey, TokenState, TokenStore};
use crate::{token::expose, Error, StoreErrorKind};

/// Keeps one credential's [`TokenState`] in a file.
///
/// - Every save writes a temporary file beside it, `fsync`s it, renames it
///   over the old one and `fsync`s the directory: after a crash the file
///   holds the old state or the new one, never a mix. Temporary files are
///   created exclusively (`O_EXCL`, `O_NOFOLLOW`), so a save never writes
///   through a link planted under their name.
/// - On Unix the file and its temporary files are created with permissions
///   `0600` (owner only).
/// - Loads and saves hold an exclusive advisory lock (`flock`) on a lock
///   file beside the store, `.{name}.lock` (removed again on release):
///   processes sharing the file take turns, and none reads a save half
///   done.
/// - **Symbolic links**: when the path is a link (to a file on a persistent
///   volume, say), the link stays and its final target is written: the
///   temporary file goes into the target's directory and is renamed over
///   the target.
/// - **Single-file bind mounts** (Docker `-v state.json:/app/state.json`,
///   Kubernetes `subPath`): a rename over a mount point fails (`EBUSY`;
///   `EXDEV` or `EPERM` on some file systems). The store then writes the
///   existing file in place (truncate, write, `fsync`) and logs a warning
///   once. Such a write is not atomic: a crash during it leaves an empty or
///   truncated document, which the next start reports as
///   [`Corrupt`](crate::StoreErrorKind::Corrupt) (the JSON document ends
///   with its closing brace, so no prefix of it reads as a state), never
///   as an older or mixed state. Mount the directory instead to keep
///   atomic saves.
/// - **Stale temporary files** (`.{name}.{pid}-{n}.tmp`, left by a process
///   that crashed during a save; they hold tokens) are removed when the
///   state is loaded, under the lock.
/// - **A missing or unwritable directory** is refused when the cache loads
///   the state, before any token is fetched, with
///   [`Unwritable`](crate::StoreErrorKind::Unwritable): without it a
///   rotated refresh token would live only in memory. [`FileStore::open`]
///   checks the same thing at once, for a service that wants to fail at
///   boot.
/// - The content is a JSON document with a format version, a generation,
///   the [`StoreKey`] of the credential and its readable parts; a file that
///   is empty, truncated, of another version or for another credential is a
///   typed error (for another credential, saying what differs), and the
///   cache then writes nothing over it. Errors name the path, never the
///   content. A file an earlier release wrote under [`StoreKey::legacy`] is
///   read.
///
/// The file holds the refresh and access tokens in clear: whoever can read
/// it can act as the application. Put it where only the service's user can.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store in the file at `path` (created on the first save). Nothing is
    /// checked here: the cache's first load refuses a directory that is
    /// missing or not writable. See [`open`](Self::open) to check now.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// A store in the file at `path`, checked now: the directory (of the
    /// link's target, for a symbolic link) exists and is writable, the file,
    /// if there is one, is readable, and stale temporary files are removed.
    ///
    /// It does blocking file system calls (a few): call it at boot, or
    /// inside `spawn_blocking`.
    ///
    /// ```no_run
    /// # fn run() -> Result<(), tower_oauth2::Error> {
    /// let store = tower_oauth2::FileStore::open("/var/lib/my-app/orange-logic.json")?;
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// Errors ([`ErrorKind::Store`](crate::ErrorKind::Store)):
    /// `Unwritable` for a missing or unwritable directory, `Unreadable` for
    /// a file that cannot be read.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, Error> {
        let store = Self::new(path);
        with_lock(&store.path, Purpose::Load, |_| Ok(Decision::Leave(())))?;
        Ok(store)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TokenStore for FileStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<TokenState>, Error> {
        let (path, key) = (self.path.clone(), key.clone());
        blocking(move || {
            let Some(bytes) = with_lock(&path, Purpose::Load, |current| {
                Ok(Decision::Leave(current.map(<[u8]>::to_vec)))
            })?
            else {
                return Ok(None);
            };
            let text = String::from_utf8(bytes).map_err(|_| {
                Error::store(StoreErrorKind::Corrupt, "the token store is not UTF-8 text")
            })?;
            TokenState::decode(&key, &text).map(Some)
        })
        .await
    }

    async fn save(
        &self,
        key: &StoreKey,
        state: &TokenState,
        expect: Expect<'_>,
    ) -> Result<Saved, Error> {
        let path = self.path.clone();
        let document = state.encode(key);
        let key = key.clone();
        let generation = expect.generation;
        // The compare and the write under the store's lock: no other save,
        // of this process or another, lands in between.
        blocking(move || {
            update(&path, |current| {
                let current =
                    current.map(|bytes| TokenState::decode(&key, &String::from_utf8_lossy(bytes)));
                let held = match &current {
                    None => 0,
                    Some(Ok(state)) => state.generation(),
                    // A store that cannot be read is never written over.
                    Some(Err(_)) => u64::MAX,
                };
                if held != generation {
                    return Ok(Decision::Leave(Saved::Conflict(
                        current.and_then(Result::ok),
                    )));
                }
                Ok(Decision::Write(document, Saved::Written))
            })
        })
        .await
    }
}

/// What [`update`]'s `decide` wants done with the file.
pub(crate) enum Decision<T> {
    /// Replace the file's content with this document, then answer `T`.
    Write(SecretString, T),
    /// Leave the file as it is and answer `T`.
    Leave(T),
}

/// A read-compare-write of the store at `path`, for fenced saves: takes the
/// store's exclusive lock, reads the current content (`None`: no file yet)
/// through a symbolic link, lets `decide` choose, writes while still holding
/// the lock, and releases. No other `update` or load of the same file, in
/// this process or another, runs in between.
///
/// Blocking: call it inside `spawn_blocking`. Errors
/// ([`ErrorKind::Store`](crate::ErrorKind::Store)) name the path, never the
/// content: `Unwritable` (missing or unwritable directory), `Unreadable`,
/// `WriteFailed`, or whatever `decide` returns.
pub(crate) fn update<T>(
    path: &Path,
    decide: impl FnOnce(Option<&[u8]>) -> Result<Decision<T>, Error>,
) -> Result<T, Error> {
    with_lock(path, Purpose::Save, decide)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Purpose {
    /// Also removes stale temporary files; a lock that cannot be taken for
    /// another reason than an unwritable directory reads as `Unreadable`.
    Load,
    Save,
}

fn with_lock<T>(
    path: &Path,
    purpose: Purpose,
    decide: impl FnOnce(Option<&[u8]>) -> Result<Decision<T>, Error>,
) -> Result<T, Error> {
    let locked = Locked::take(path).map_err(|e| lock_error(path, purpose, e))?;
    if purpose == Purpose::Load {
        locked.remove_stale(path);
    }
    let current = locked.read().map_err(|e| {
        Error::store(
            StoreErrorKind::Unreadable,
            format!("cannot read the token store {}", path.display()),
        )
        .with_source(e)
    })?;
    match decide(current.as_deref())? {
        Decision::Leave(answer) => Ok(answer),
        Decision::Write(document, answer) => {
            locked.write(expose(&document).as_bytes()).map_err(|e| {
                Error::store(
                    StoreErrorKind::WriteFailed,
                    format!("cannot write the token store {}", path.display()),
                )
                .with_source(e)
            })?;
            Ok(answer)
        }
    }
}

fn lock_error(path: &Path, purpose: Purpose, e: io::Error) -> Error {
    use io::ErrorKind::*;
    let error = if matches!(
        e.kind(),
        NotFound | PermissionDenied | ReadOnlyFilesystem | NotADirectory
    ) {
        Error::store(
            StoreErrorKind::Unwritable,
            format!(
                "the token store {} cannot be written: its directory is missing or not writable",
                path.display()
            ),
        )
    } else {
        let kind = match purpose {
            Purpose::Load => StoreErrorKind::Unreadable,
            Purpose::Save => StoreErrorKind::WriteFailed,
        };
        Error::store(
            kind,
            format!("cannot lock the token store {}", path.display()),
        )
    };
    error.with_source(e)
}

/// The store's final target, its directory and name, with its lock held.
struct Locked {
    target: PathBuf,
    dir: PathBuf,
    name: OsString,
    _lock: LockFile,
}

impl Locked {
    fn take(path: &Path) -> io::Result<Self> {
        let target = resolve(path)?;
        let (dir, name) = split(&target)?;
        let mut lock_name = OsString::from(".");
        lock_name.push(&name);
        lock_name.push(".lock");
        let lock = LockFile::take(dir.join(lock_name))?;
        Ok(Self {
            target,
            dir,
            name,
            _lock: lock,
        })
    }

    fn read(&self) -> io::Result<Option<Vec<u8>>> {
        let mut file = match no_follow(OpenOptions::new().read(true)).open(&self.target) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            other => other?,
        };
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(Some(bytes))
    }

    /// Write, fsync, rename, fsync the directory; in place when the rename
    /// is refused over a mount point.
    fn write(&self, bytes: &[u8]) -> io::Result<()> {
        let (temporary, mut file) = self.temporary()?;
        let written = file.write_all(bytes).and_then(|()| file.sync_all());
        drop(file);
        let renamed = written.and_then(|()| rename(&temporary, &self.target));
        let Err(e) = renamed else {
            #[cfg(unix)]
            File::open(&self.dir)?.sync_all()?;
            return Ok(());
        };
        let _ = fs::remove_file(&temporary);
        let mount_point = matches!(
            e.kind(),
            io::ErrorKind::ResourceBusy
                | io::ErrorKind::CrossesDevices
                | io::ErrorKind::PermissionDenied
        );
        if mount_point && fs::symlink_metadata(&self.target).is_ok_and(|m| m.is_file()) {
            self.write_in_place(bytes, &e)
        } else {
            Err(e)
        }
    }

    fn write_in_place(&self, bytes: &[u8], refused: &io::Error) -> io::Result<()> {
        static WARNED: AtomicBool = AtomicBool::new(false);
        let mut file = no_follow(OpenOptions::new().write(true)).open(&self.target)?;
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %self.target.display(),
                error = %refused,
                "the token store cannot be replaced atomically (a single-file bind mount?): \
                 writing it in place; a crash during a save leaves a file the next start \
                 reports as corrupt. Mount its directory instead"
            );
        }
        // A mounted file may belong to someone else: the mode is best effort.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let _ = file.set_permissions(fs::Permissions::from_mode(0o600));
        }
        file.set_len(0)?;
        file.write_all(bytes)?;
        file.sync_all()
    }

    /// A new temporary file, created exclusively: a name already taken (a
    /// leftover, a planted link) is skipped, never written through.
    fn temporary(&self) -> io::Result<(PathBuf, File)> {
        // Unique per save, also across the caches of one process.
        static SAVES: AtomicU64 = AtomicU64::new(0);
        let mut taken = 0;
        loop {
            let n = SAVES.fetch_add(1, Ordering::Relaxed);
            let mut name = OsString::from(".");
            name.push(&self.name);
            name.push(format!(".{}-{n}.tmp", std::process::id()));
            let path = self.dir.join(name);
            match private(OpenOptions::new().write(true).create_new(true)).open(&path) {
                Ok(file) => return Ok((path, file)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && taken < 1000 => taken += 1,
                Err(e) => return Err(e),
            }
        }
    }

    /// Removes the temporary files of a save that never finished. Under the
    /// lock every one is stale: a save holds the lock while its file exists.
    /// Also beside the link itself, where earlier releases wrote them.
    fn remove_stale(&self, path: &Path) {
        let mut places = vec![(self.dir.clone(), self.name.clone())];
        if let Ok(link) = split(path) {
            if link != places[0] {
                places.push(link);
            }
        }
        for (dir, name) in places {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let stale = is_temporary_of(&entry.file_name(), &name)
                    && entry.file_type().is_ok_and(|t| !t.is_dir());
                if !stale {
                    continue;
                }
                match fs::remove_file(entry.path()) {
                    Ok(()) => tracing::debug!(
                        path = %entry.path().display(),
                        "removed a stale temporary file of the token store"
                    ),
                    Err(e) => tracing::warn!(
                        path = %entry.path().display(),
                        error = %e,
                        "cannot remove a stale temporary file of the token store (it holds tokens)"
                    ),
                }
            }
        }
    }
}

/// Whether `file` is named like a temporary file of the store `name`:
/// `.{name}.{pid}-{n}.tmp`.
fn is_temporary_of(file: &OsStr, name: &OsStr) -> bool {
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let middle = file
        .as_encoded_bytes()
        .strip_prefix(b".")
        .and_then(|rest| rest.strip_prefix(name.as_encoded_bytes()))
        .and_then(|rest| rest.strip_prefix(b"."))
        .and_then(|rest| rest.strip_suffix(b".tmp"));
    let Some(middle) = middle else {
        return false;
    };
    let mut parts = middle.splitn(2, |&b| b == b'-');
    matches!(
        (parts.next(), parts.next()),
        (Some(pid), Some(n)) if digits(pid) && digits(n)
    )
}

/// An exclusive `flock` on a lock file, removed again before it is
/// released: whoever waited on it then finds another file (or none) at the
/// path and starts over, so no lock files pile up beside the store.
struct LockFile {
    file: File,
    #[cfg_attr(not(unix), allow(dead_code))]
    path: PathBuf,
}

impl LockFile {
    fn take(path: PathBuf) -> io::Result<Self> {
        loop {
            let file =
                private(OpenOptions::new().read(true).write(true).create(true)).open(&path)?;
            file.lock()?;
            #[cfg(unix)]
            {
                use std::os::unix::fs::MetadataExt as _;
                let held = file.metadata()?;
                match fs::symlink_metadata(&path) {
                    Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {}
                    Ok(now) if now.file_type().is_symlink() => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            "the token store's lock file is a symbolic link",
                        ))
                    }
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
            }
            return Ok(Self { file, path });
        }
    }
}

impl Drop for LockFile {
    fn drop(&mut self) {
        #[cfg(unix)]
        let _ = fs::remove_file(&self.path);
        let _ = self.file.unlock();
    }
}

/// The final target of `path`, following symbolic links (the file itself
/// may not exist yet). Directories on the way are left to the kernel.
fn resolve(path: &Path) -> io::Result<PathBuf> {
    let mut path = path.to_path_buf();
    for _ in 0..40 {
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                let target = fs::read_link(&path)?;
                path = match path.parent() {
                    Some(dir) if target.is_relative() => dir.join(target),
                    _ => target,
                };
            }
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => return Ok(path),
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        "too many levels of symbolic links",
    ))
}

fn split(path: &Path) -> io::Result<(PathBuf, OsString)> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    Ok((dir.to_path_buf(), name.to_owned()))
}

fn rename(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(test)]
    if let Some(code) = tests::RENAME_FAILS.with(std::cell::Cell::get) {
        return Err(io::Error::from_raw_os_error(code));
    }
    fs::rename(from, to)
}

/// Owner-only and never through a symbolic link.
fn private(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    no_follow(options)
}

fn no_follow(options: &mut OpenOptions) -> &mut OpenOptions {
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.custom_flags(O_NOFOLLOW);
    }
    options
}

#[cfg(unix)]
const O_NOFOLLOW: i32 = libc::O_NOFOLLOW;

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|_| {
        Err(Error::store(
            StoreErrorKind::WriteFailed,
            "the token store's I/O task failed",
        ))
    })
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;
    use crate::ErrorKind;

    thread_local! {
        /// Makes this thread's renames fail with this OS error, as a rename
        /// over a single-file bind mount does.
        pub(super) static RENAME_FAILS: Cell<Option<i32>> = const { Cell::new(None) };
    }

    fn key() -> StoreKey {
        StoreKey::new("refresh_token", "app", "https://a.example/token", &[])
    }

    fn document(refresh_token: &str) -> SecretString {
        let text = format!(
            r#"{{"version":1,"key":"{}","refresh_token":"{refresh_token}"}}"#,
            key().as_str()
        );
        TokenState::decode(&key(), &text).unwrap().encode(&key())
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<_> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_refused_rename_falls_back_to_an_in_place_write() {
        // EBUSY (a bind-mounted file), EXDEV, EPERM.
        for code in [16, 18, 1] {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("state.json");
            fs::write(&path, expose(&document("OLD-SENTINEL"))).unwrap();
            let before = inode(&path);
            RENAME_FAILS.with(|f| f.set(Some(code)));
            let written = update(&path, |_| Ok(Decision::Write(document("rt-2"), ())));
            RENAME_FAILS.with(|f| f.set(None));
            written.unwrap_or_else(|e| panic!("errno {code}: {e}"));
            let text = fs::read_to_string(&path).unwrap();
            let state = TokenState::decode(&key(), &text).unwrap();
            assert_eq!(state.refresh_token().map(expose), Some("rt-2"));
            assert_eq!(inode(&path), before, "written in place");
            assert_eq!(names(dir.path()), ["state.json"], "no temporary file left");
            #[cfg(unix)]
            {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{mode:o}");
            }
        }
        // Another failure is reported, not written around.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        fs::write(&path, "old").unwrap();
        RENAME_FAILS.with(|f| f.set(Some(5))); // EIO
        let error = update(&path, |_| Ok(Decision::Write(document("rt-2"), ()))).unwrap_err();
        RENAME_FAILS.with(|f| f.set(None));
        assert_eq!(error.kind(), &ErrorKind::Store(StoreErrorKind::WriteFailed));
        assert_eq!(fs::read_to_string(&path).unwrap(), "old");
        // An in-place write torn by a crash is a prefix of the document (or
        // nothing): never a state, always Corrupt.
        let whole = expose(&document("rt-2")).to_owned();
        for end in 0..whole.len() {
            let error = TokenState::decode(&key(), &whole[..end]).unwrap_err();
            assert_eq!(
                error.kind(),
                &ErrorKind::Store(StoreErrorKind::Corrupt),
                "{end}"
            );
        }
    }

    #[cfg(unix)]
    fn inode(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt as _;
        fs::metadata(path).unwrap().ino()
    }

    #[cfg(not(unix))]
    fn inode(_: &Path) -> u64 {
        0
    }

    #[test]
    fn concurrent_updates_lose_nothing() {
        // Read, increment, write: without the lock two updates read the same
        // number and one increment is lost.
        const THREADS: usize = 8;
        const EACH: usize = 25;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter");
        let barrier = std::sync::Barrier::new(THREADS);
        std::thread::scope(|scope| {
            for _ in 0..THREADS {
                scope.spawn(|| {
                    barrier.wait();
                    for _ in 0..EACH {
                        update(&path, |current| {
                            let n: usize = current
                                .map(|bytes| std::str::from_utf8(bytes).unwrap().parse().unwrap())
                                .unwrap_or(0);
                            std::thread::yield_now();
                            Ok(Decision::Write(SecretString::from((n + 1).to_string()), ()))
                        })
                        .unwrap();
                    }
                });
            }
        });
        assert_eq!(
            fs::read_to_string(&path).unwrap(),
            (THREADS * EACH).to_string()
        );
        assert_eq!(
            names(dir.path()),
            ["counter"],
            "no lock or temporary file left"
        );
    }

    #[test]
    fn leave_writes_nothing_and_hands_back_the_answer() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.json");
        let seen = update(&path, |current| Ok(Decision::Leave(current.is_some()))).unwrap();
        assert!(!seen);
        assert!(!path.exists());
        fs::write(&path, "kept").unwrap();
        let seen = update(&path, |current| {
            Ok(Decision::Leave(current.map(<[u8]>::to_vec)))
        });
        assert_eq!(seen.unwrap().as_deref(), Some(&b"kept"[..]));
        let refused = update::<()>(&path, |_| {
            Err(Error::store(StoreErrorKind::OtherCredential, "newer"))
        });
        assert_eq!(
            refused.unwrap_err().kind(),
            &ErrorKind::Store(StoreErrorKind::OtherCredential)
        );
        assert_eq!(fs::read_to_string(&path).unwrap(), "kept");
    }

    #[cfg(unix)]
    #[test]
    fn no_follow_is_the_platform_flag() {
        use std::os::unix::fs::OpenOptionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        fs::write(&target, "x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let error = OpenOptions::new()
            .read(true)
            .custom_flags(O_NOFOLLOW)
            .open(&link)
            .unwrap_err();
        // ELOOP on Linux, macOS and the BSDs.
        assert!(matches!(error.raw_os_error(), Some(40 | 62)), "{error:?}");
    }

    #[test]
    fn temporary_names_are_recognised() {
        let name = OsStr::new("state.json");
        for yes in [".state.json.1-0.tmp", ".state.json.4242-17.tmp"] {
            assert!(is_temporary_of(OsStr::new(yes), name), "{yes}");
        }
        for no in [
            "state.json",
            ".state.json.lock",
            ".state.json.1-0.tmp.bak",
            ".state.json.-0.tmp",
            ".state.json.1-.tmp",
            ".state.json.x-0.tmp",
            ".state.json.1.tmp",
            "state.json.1-0.tmp",
            ".other.json.1-0.tmp",
            ".state.json.old.1-0.tmp",
        ] {
            assert!(!is_temporary_of(OsStr::new(no), name), "{no}");
        }
    }
}
