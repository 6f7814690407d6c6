//! One process per run directory: `train` and `ablate` hold `DIR/.lock` for the whole run, so
//! two runs into the same `--out` never interleave their metrics or checkpoints.
//!
//! The lock is an advisory `flock` (BSD file lock) on `DIR/.lock`, which names its owner (pid,
//! host, start time) for the message a second process gets. The kernel drops the lock when its
//! owner exits, however it exits, so a lock left by a killed process is free and is taken over
//! (with a note on stderr naming the dead owner). A run that ends removes the file.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock of a run directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Holds the `flock`: closing it releases the lock.
    _file: File,
}

impl RunLock {
    /// Takes the lock of `dir` (created if missing). An error naming the directory and the
    /// owner's pid when another live process holds it.
    pub fn acquire(dir: &Path) -> Result<RunLock> {
        if std::fs::metadata(dir).is_ok_and(|meta| !meta.is_dir()) {
            bail!("--out {}: not a directory", dir.display());
        }
        std::fs::create_dir_all(dir).with_context(|| dir.display().to_string())?;
        let path = dir.join(".lock");
        if std::fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_symlink()) {
            bail!(
                "{} is a symlink; a run directory's lock must be a plain file: remove the link",
                path.display()
            );
        }
        loop {
            // O_NOFOLLOW: a symlink put there since the check is refused too, never written through.
            let mut file = File::options()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .with_context(|| path.display().to_string())?;
            // SAFETY: flock on a file descriptor we own; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
                let error = std::io::Error::last_os_error();
                if error.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(error).with_context(|| format!("locking {}", path.display()));
                }
                bail!(
                    "{} is in use by another run ({}); wait for it to end or choose another --out",
                    dir.display(),
                    owner_of(&mut file)
                );
            }
            // The previous owner removes the file as it ends; if it did so between our open and
            // our flock, we hold a lock on a file nobody else will see: try again.
            if !is_the_file_at(&file, &path) {
                continue;
            }
            let previous = owner_of(&mut file);
            if !previous.is_empty() {
                crate::console::eprintln(&format!(
                    "note: {}: taking over the lock of a run that is gone ({previous})",
                    dir.display()
                ));
            }
            write_owner(&mut file).with_context(|| path.display().to_string())?;
            return Ok(RunLock { path, _file: file });
        }
    }
}

impl Drop for RunLock {
    /// Removes the lock file while still holding the lock; closing the file then releases it.
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether the open `file` is the one `path` names now (same device and inode).
fn is_the_file_at(file: &File, path: &Path) -> bool {
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// The owner a lock file names ("process 123 on host h, started at unix time 1700000000"),
/// empty for a new file.
fn owner_of(file: &mut File) -> String {
    let mut text = String::new();
    let _ = file.rewind().and_then(|_| file.read_to_string(&mut text));
    text.trim().to_string()
}

fn write_owner(file: &mut File) -> std::io::Result<()> {
    let started = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    file.set_len(0)?;
    file.rewind()?;
    writeln!(
        file,
        "process {} on host {}, started at unix time {started}",
        std::process::id(),
        hostname()
    )?;
    file.sync_all()
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ditmoe-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_held_lock_refuses_a_second_owner_and_is_released_on_drop() {
        let dir = temp("held");
        let lock = RunLock::acquire(&dir).unwrap();
        let err = RunLock::acquire(&dir).unwrap_err().to_string();
        let pid = std::process::id().to_string();
        assert!(
            err.contains(&dir.display().to_string()) && err.contains(&pid),
            "{err}"
        );
        drop(lock);
        assert!(
            !dir.join(".lock").exists(),
            "the lock file goes with the lock"
        );
        let again = RunLock::acquire(&dir).unwrap();
        drop(again);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_lock_file_left_by_a_dead_process_is_taken_over() {
        let dir = temp("stale");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(".lock"), "process 4194305 on host gone\n").unwrap();
        let lock = RunLock::acquire(&dir).unwrap();
        let text = std::fs::read_to_string(dir.join(".lock")).unwrap();
        assert!(
            text.starts_with(&format!("process {} ", std::process::id())),
            "{text}"
        );
        drop(lock);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_lock_symlink_or_a_file_as_the_directory_is_refused_untouched() {
        let dir = temp("symlink");
        std::fs::create_dir_all(&dir).unwrap();
        let precious = dir.join("precious.txt");
        std::fs::write(&precious, "keep me").unwrap();
        let run = dir.join("run");
        std::fs::create_dir_all(&run).unwrap();
        std::os::unix::fs::symlink(&precious, run.join(".lock")).unwrap();
        let err = RunLock::acquire(&run).unwrap_err().to_string();
        assert!(err.contains("is a symlink"), "{err}");
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "keep me");
        assert!(std::fs::symlink_metadata(run.join(".lock")).is_ok());
        let err = RunLock::acquire(&precious).unwrap_err().to_string();
        assert!(err.ends_with("precious.txt: not a directory"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
