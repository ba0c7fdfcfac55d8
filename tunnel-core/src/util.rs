//! Small helpers shared by the roles.

use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use crate::error::ConfigError;

/// Writes a file readable only by its owner (tokens, keys).
pub(crate) fn write_private(path: &Path, data: &[u8]) -> Result<(), ConfigError> {
    use std::io::Write;
    let io_err = |source| ConfigError::Io {
        path: path.to_owned(),
        source,
    };
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path).map_err(io_err)?;
    file.write_all(data).map_err(io_err)
}

/// Locks a mutex even if a panicking thread poisoned it. Every critical section in this
/// crate leaves its data consistent at each step (a counter update, a map insert), so the
/// data is still sound; refusing it would turn one panic into a dead relay.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
