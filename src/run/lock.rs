//! One writer per run: an exclusive OS advisory lock (`flock`) on `RUN_DIR/lock`, held for as long as
//! a trainer owns the run. The OS drops it when the process ends, however it ends, so `kill -9` never
//! leaves a stale lock; a second process is refused with the PID of the holder.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use crate::error::{GrokError, Result};

/// Name of the lock file inside a run directory.
pub const LOCK_FILE: &str = "lock";

/// The held lock; released when dropped (or when the process exits).
#[derive(Debug)]
pub struct RunLock {
    _file: File,
    path: PathBuf,
}

impl RunLock {
    /// Creates `root` if needed and takes its lock, or says which process holds it.
    pub fn acquire(root: &Path) -> Result<Self> {
        std::fs::create_dir_all(root)
            .map_err(|e| GrokError::file(root, format!("cannot create: {e}")))?;
        let path = root.join(LOCK_FILE);
        let io =
            |e: std::io::Error| GrokError::file(&path, format!("cannot use the lock file: {e}"));
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {
                file.set_len(0).map_err(io)?;
                file.rewind().map_err(io)?;
                write!(file, "{}", std::process::id()).map_err(io)?;
                file.flush().map_err(io)?;
                Ok(RunLock { _file: file, path })
            }
            Err(TryLockError::WouldBlock) => {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                let holder = match holder.trim() {
                    "" => "another process".to_string(),
                    pid => format!("process {pid}"),
                };
                Err(GrokError::file(
                    root,
                    format!(
                        "is in use by {holder} (it holds {LOCK_FILE}); wait for it to finish or stop it \
                         before training or resuming this run"
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => Err(io(e)),
        }
    }

    /// Waits up to `wait` for `root`'s lock to be free (a process that was told to stop is still
    /// writing its last checkpoint), returning at once when `root` holds no lock file; false when it
    /// is still held after `wait`.
    pub fn wait_until_free(root: &Path, wait: std::time::Duration) -> bool {
        let deadline = std::time::Instant::now() + wait;
        loop {
            if !root.join(LOCK_FILE).exists() {
                return true;
            }
            if let Ok(file) = OpenOptions::new().read(true).open(root.join(LOCK_FILE)) {
                match file.try_lock() {
                    Ok(()) => return true,
                    Err(TryLockError::Error(_)) => return true,
                    Err(TryLockError::WouldBlock) => {}
                }
            }
            if std::time::Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = RunLock::acquire(dir.path()).unwrap();
        let e = RunLock::acquire(dir.path()).unwrap_err().to_string();
        let pid = std::process::id().to_string();
        assert!(e.contains(&pid) && e.contains("in use"), "{e}");
        drop(first);
        let again = RunLock::acquire(dir.path()).unwrap();
        assert_eq!(std::fs::read_to_string(again.path()).unwrap().trim(), pid);
    }
}
