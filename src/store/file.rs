//! A token store in one file, replaced atomically.

use std::{
    fs::{self, File, OpenOptions},
    io::{self, Write as _},
    path::{Path, PathBuf},
};

use super::{StoreKey, TokenState, TokenStore};
use crate::{token::expose, Error, StoreErrorKind};

/// Keeps one credential's [`TokenState`] in a file.
///
/// - Every save writes a temporary file beside it, `fsync`s it, renames it
///   over the old one and `fsync`s the directory: after a crash the file
///   holds the old state or the new one, never a mix.
/// - On Unix the file is created with permissions `0600` (owner only).
/// - The content is a JSON document with a format version, the
///   [`StoreKey`] of the credential and its readable parts; a file that is
///   empty, truncated, of another version or for another credential is a
///   typed error (for another credential, saying what differs), and the
///   cache then writes nothing over it. A file an earlier release wrote
///   under [`StoreKey::legacy`] is read.
///
/// The file holds the refresh and access tokens in clear: whoever can read
/// it can act as the application. Put it where only the service's user can.
#[derive(Debug, Clone)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    /// A store in the file at `path` (created on the first save; its
    /// directory must exist).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl TokenStore for FileStore {
    async fn load(&self, key: &StoreKey) -> Result<Option<TokenState>, Error> {
        let (path, key) = (self.path.clone(), key.clone());
        blocking(move || match fs::read(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::store(
                StoreErrorKind::Unreadable,
                format!("cannot read the token store {}", path.display()),
            )
            .with_source(e)),
            Ok(bytes) => {
                let text = String::from_utf8(bytes).map_err(|_| {
                    Error::store(StoreErrorKind::Corrupt, "the token store is not UTF-8 text")
                })?;
                TokenState::decode(&key, &text).map(Some)
            }
        })
        .await
    }

    async fn save(&self, key: &StoreKey, state: &TokenState) -> Result<(), Error> {
        let path = self.path.clone();
        let document = state.encode(key);
        blocking(move || {
            replace(&path, expose(&document).as_bytes()).map_err(|e| {
                Error::store(
                    StoreErrorKind::WriteFailed,
                    format!("cannot write the token store {}", path.display()),
                )
                .with_source(e)
            })
        })
        .await
    }
}

/// Write, fsync, rename, fsync the directory.
fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let mut temporary_name = std::ffi::OsString::from(".");
    temporary_name.push(name);
    // Unique per save: two caches of one process may save the same file at
    // once, and each must rename only what it wrote whole.
    static SAVES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SAVES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    temporary_name.push(format!(".{}-{n}.tmp", std::process::id()));
    let temporary = dir.join(temporary_name);

    let written = (|| {
        let mut options = OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let mut file = options.open(&temporary)?;
        // A left-over temporary file keeps its old mode: set it again.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            file.set_permissions(fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(bytes)?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
        return written;
    }
    #[cfg(unix)]
    File::open(dir)?.sync_all()?;
    Ok(())
}

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
