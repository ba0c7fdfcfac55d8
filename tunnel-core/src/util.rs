//! Small helpers shared by the roles.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::ConfigError;

/// Writes a secret file (tokens, keys) readable only by its owner, atomically: the data goes
/// to a new temporary file beside `path` created with mode 0600, is synced, and is renamed
/// over `path`. So the mode is right whatever the old file's was, a crash leaves the old
/// file or the new one (never half of one), and a symlink at `path` is refused rather than
/// written through.
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), ConfigError> {
    use std::io::Write;
    let io_err = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_symlink() => {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "refusing to write a secret through a symbolic link",
            )));
        }
        Ok(meta) if !meta.is_file() => {
            return Err(io_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        _ => {}
    }
    let name = path
        .file_name()
        .ok_or_else(|| io_err(std::io::ErrorKind::InvalidInput.into()))?;
    let mut suffix = [0u8; 8];
    getrandom::fill(&mut suffix).map_err(|e| io_err(std::io::Error::other(e.to_string())))?;
    let tmp = path.with_file_name(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        crate::hex::encode(&suffix)
    ));
    let mut options = std::fs::OpenOptions::new();
    // `create_new` never follows or reuses an existing file at the temporary name.
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let written = (|| {
        let mut file = options.open(&tmp)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // The umask may have cleared bits of 0600, never added any; set it exactly.
            file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        }
        file.write_all(data)?;
        file.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io_err)
}

/// Locks a mutex even if a panicking thread poisoned it. Every critical section in this
/// crate leaves its data consistent at each step (a counter update, a map insert), so the
/// data is still sound; refusing it would turn one panic into a dead relay.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(all(test, unix))]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(name: &str) -> std::path::PathBuf {
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).unwrap();
        let dir = std::env::temp_dir().join(format!("tunnel-{name}-{}", crate::hex::encode(&r)));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn an_existing_world_readable_secret_becomes_owner_only_when_rewritten() {
        let dir = scratch("mode");
        let path = dir.join("tokens.toml");
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, b"new").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let leftovers = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_secret_is_never_written_through_a_symlink() {
        let dir = scratch("link");
        let target = dir.join("elsewhere");
        std::fs::write(&target, "untouched").unwrap();
        let link = dir.join("link.toml");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let err = write_private(&link, b"secret").unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
