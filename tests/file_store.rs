//! The file store on the file systems services really get: a path that is a
//! symbolic link to a persistent volume, a single-file bind mount, stale and
//! planted temporary files, a missing or unwritable directory.

mod support;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use secrecy::ExposeSecret;
use support::scripted::Scripted;
use tower_oauth2::{
    ErrorKind, Expect, FileStore, StoreErrorKind, StoreKey, TokenCache, TokenState, TokenStore,
};

fn key() -> StoreKey {
    StoreKey::new("refresh_token", "app", "https://auth.example/token", &[])
}

fn state(refresh_token: &str) -> TokenState {
    let text = format!(
        r#"{{"version":1,"key":"{}","refresh_token":"{refresh_token}"}}"#,
        key().as_str()
    );
    TokenState::decode(&key(), &text).unwrap()
}

async fn stored(path: &Path) -> Option<String> {
    FileStore::new(path)
        .load(&key())
        .await
        .unwrap()
        .and_then(|s| s.refresh_token().map(|t| t.expose_secret().to_owned()))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[cfg(unix)]
#[tokio::test]
async fn a_symlinked_store_is_written_through_to_its_target() {
    use std::os::unix::fs::symlink;
    let root = tempfile::tempdir().unwrap();
    let (volume, app) = (root.path().join("volume"), root.path().join("app"));
    fs::create_dir(&volume).unwrap();
    fs::create_dir(&app).unwrap();
    let target = volume.join("state.json");
    FileStore::new(&target)
        .save(&key(), &state("rt-1"), Expect::new(0, None))
        .await
        .unwrap();

    // An absolute link to an existing file.
    let link = app.join("state.json");
    symlink(&target, &link).unwrap();
    FileStore::new(&link)
        .save(&key(), &state("rt-2"), Expect::new(0, None))
        .await
        .unwrap();
    assert!(
        fs::symlink_metadata(&link).unwrap().is_symlink(),
        "the link stays"
    );
    assert_eq!(fs::read_link(&link).unwrap(), target);
    assert_eq!(
        stored(&target).await.as_deref(),
        Some("rt-2"),
        "the target is new"
    );
    assert_eq!(stored(&link).await.as_deref(), Some("rt-2"));
    assert_eq!(mode(&target), 0o600);

    // A chain of relative links to a file that does not exist yet.
    symlink("../volume/other.json", app.join("relative.json")).unwrap();
    let chain = app.join("chain.json");
    symlink("relative.json", &chain).unwrap();
    FileStore::new(&chain)
        .save(&key(), &state("rt-3"), Expect::new(0, None))
        .await
        .unwrap();
    assert!(fs::symlink_metadata(&chain).unwrap().is_symlink());
    assert!(fs::symlink_metadata(app.join("relative.json"))
        .unwrap()
        .is_symlink());
    assert_eq!(
        stored(&volume.join("other.json")).await.as_deref(),
        Some("rt-3")
    );
    assert_eq!(mode(&volume.join("other.json")), 0o600);

    // No temporary or lock file left on either side.
    assert_eq!(names(&app), ["chain.json", "relative.json", "state.json"]);
    assert_eq!(names(&volume), ["other.json", "state.json"]);
}

/// The child of the bind mount test: saves `rt-2` into the file given,
/// which its parent bind-mounted in a mount namespace of its own.
#[tokio::test]
#[ignore = "the child process of the bind mount test, started by it"]
async fn bind_mount_child() {
    let path = std::env::var("FILE_STORE_MOUNTED").expect("FILE_STORE_MOUNTED");
    match FileStore::new(path)
        .save(&key(), &state("rt-2"), Expect::new(0, None))
        .await
    {
        Ok(tower_oauth2::Saved::Written) => println!("SAVED"),
        Ok(other) => panic!("the save was refused: {other:?}"),
        Err(e) => panic!("the save failed: {e}"),
    }
}

/// A real single-file bind mount, where the test may make one (root, and
/// `unshare`/`mount` available); skipped otherwise. The unit tests of the
/// store simulate the refused rename everywhere.
#[cfg(target_os = "linux")]
#[test]
fn a_single_file_bind_mount_is_written_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let (source, mount_point) = (
        dir.path().join("volume.json"),
        dir.path().join("state.json"),
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        FileStore::new(&source)
            .save(&key(), &state("rt-1"), Expect::new(0, None))
            .await
            .unwrap();
    });
    fs::write(&mount_point, "").unwrap();
    let unshare = |script: &str| {
        std::process::Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .arg(&source)
            .arg(&mount_point)
            .arg(std::env::current_exe().unwrap())
            .env("FILE_STORE_MOUNTED", &mount_point)
            .stdin(std::process::Stdio::null())
            .output()
    };
    // A test that did not run must not pass: without the means to make a
    // bind mount, it fails and says what it needs.
    let cannot = "no bind mount here: this test needs root and util-linux's unshare and mount \
                  (run the suite as root; the unit tests of file.rs simulate the refused rename)";
    assert!(
        unshare("true").is_ok_and(|probe| probe.status.success()),
        "{cannot}"
    );
    let output = unshare(
        r#"mount --bind "$0" "$1" || exit 77
exec "$2" bind_mount_child --exact --ignored --nocapture --quiet"#,
    )
    .unwrap();
    assert_ne!(output.status.code(), Some(77), "{cannot}");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("SAVED"),
        "the save through the bind mount failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    runtime.block_on(async {
        assert_eq!(
            stored(&source).await.as_deref(),
            Some("rt-2"),
            "the mounted file holds the new state"
        );
    });
    assert_eq!(
        fs::read(&mount_point).unwrap(),
        b"",
        "the mount point itself was never written"
    );
    assert_eq!(names(dir.path()), ["state.json", "volume.json"]);
}

#[tokio::test]
async fn stale_temporary_files_are_removed_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.json");
    let store = FileStore::new(&path);
    store
        .save(&key(), &state("rt-1"), Expect::new(0, None))
        .await
        .unwrap();
    // Left by processes that crashed during a save: they hold tokens.
    for stale in [".state.json.999999-3.tmp", ".state.json.1-0.tmp"] {
        fs::write(dir.path().join(stale), "SENTINEL-LEFTOVER").unwrap();
    }
    // Not the store's.
    for other in [".state.json.bak", ".other.json.1-0.tmp", "notes.txt"] {
        fs::write(dir.path().join(other), "kept").unwrap();
    }
    assert_eq!(stored(&path).await.as_deref(), Some("rt-1"));
    assert_eq!(
        names(dir.path()),
        [
            ".other.json.1-0.tmp",
            ".state.json.bak",
            "notes.txt",
            "state.json"
        ]
    );
    // The eager check cleans up as well.
    fs::write(dir.path().join(".state.json.7-7.tmp"), "SENTINEL-LEFTOVER").unwrap();
    FileStore::open(&path).unwrap();
    assert_eq!(names(dir.path()).len(), 4);
}

#[cfg(unix)]
#[tokio::test]
async fn a_save_never_writes_through_a_link_planted_at_a_temporary_name() {
    let root = tempfile::tempdir().unwrap();
    let (dir, elsewhere) = (root.path().join("store"), root.path().join("elsewhere"));
    fs::create_dir(&dir).unwrap();
    fs::create_dir(&elsewhere).unwrap();
    let victim = elsewhere.join("readable-by-all");
    fs::write(&victim, "untouched").unwrap();
    // Every name this process's next saves would pick.
    for n in 0..300 {
        let name = format!(".state.json.{}-{n}.tmp", std::process::id());
        std::os::unix::fs::symlink(&victim, dir.join(name)).unwrap();
    }
    let path = dir.join("state.json");
    FileStore::new(&path)
        .save(&key(), &state("SENTINEL-RT"), Expect::new(0, None))
        .await
        .unwrap();
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
    assert!(fs::symlink_metadata(&path).unwrap().is_file());
    assert_eq!(mode(&path), 0o600);
    assert_eq!(stored(&path).await.as_deref(), Some("SENTINEL-RT"));
    // The load removed the planted names (links only: the victim stays).
    assert_eq!(names(&dir), ["state.json"]);
    assert_eq!(fs::read_to_string(&victim).unwrap(), "untouched");
}

fn assert_unwritable(error: &tower_oauth2::Error, path: &Path) {
    assert_eq!(
        error.kind(),
        &ErrorKind::Store(StoreErrorKind::Unwritable),
        "{error}"
    );
    assert!(
        error.to_string().contains(&*path.to_string_lossy()),
        "names the path: {error}"
    );
}

#[tokio::test]
async fn a_missing_or_unwritable_directory_is_refused_before_any_token_is_fetched() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").join("state.json");
    fs::write(dir.path().join("a-file"), "").unwrap();
    let under_a_file = dir.path().join("a-file").join("state.json");
    let mut paths: Vec<PathBuf> = vec![missing.clone(), under_a_file];
    #[cfg(unix)]
    {
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink(dir.path().join("gone").join("state.json"), &link).unwrap();
        paths.push(link);
    }
    for path in &paths {
        let error = FileStore::new(path).load(&key()).await.unwrap_err();
        assert_unwritable(&error, path);
        assert_unwritable(&FileStore::open(path).unwrap_err(), path);
    }

    // The cache says so at the first token, and asks for none.
    let script = Scripted::tokens(Duration::from_secs(3600));
    let cache = TokenCache::builder(script.source())
        .store(FileStore::new(&missing))
        .build();
    let error = cache.token().await.unwrap_err();
    assert_eq!(error.kind(), &ErrorKind::Store(StoreErrorKind::Unwritable));
    assert_eq!(script.calls(), 0, "no token request");

    // A directory without write permission; a privileged user writes
    // anyway, so this part only runs where the mode is enforced.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let locked = dir.path().join("read-only");
        fs::create_dir(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o500)).unwrap();
        let enforced = fs::write(locked.join("probe"), "").is_err();
        if enforced {
            let path = locked.join("state.json");
            assert_unwritable(
                &FileStore::new(&path).load(&key()).await.unwrap_err(),
                &path,
            );
        } else {
            eprintln!("skipped the read-only directory: this user writes through modes");
        }
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o700)).unwrap();
    }
}
