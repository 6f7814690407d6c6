//! Writing an output file without harming what its path names: the bytes go to a temporary
//! sibling, are synced, and are renamed into place, so an interrupted write never leaves a
//! half-written file under the real name. An existing destination must be a regular file (a
//! device node, a FIFO or a directory is refused rather than replaced); a symlink is written
//! through, the temporary file placed next to its target.

use std::io::{Error, ErrorKind, Result, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Where a write to `path` lands: `path` itself, or the file a symlink there resolves to. An
/// error when that exists and is not a regular file, or the symlink leads nowhere.
pub fn write_destination(path: &Path) -> Result<PathBuf> {
    let target = match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(e),
        Ok(meta) if meta.file_type().is_symlink() => std::fs::canonicalize(path).map_err(|e| {
            Error::new(
                e.kind(),
                format!("a symlink to a file that cannot be reached ({e})"),
            )
        })?,
        Ok(_) => path.to_path_buf(),
    };
    if !std::fs::metadata(&target)?.is_file() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "exists and is not a regular file (refusing to replace it)",
        ));
    }
    Ok(target)
}

/// Writes `bytes` to `path` atomically (see the module docs). The error is the I/O error
/// alone; callers name the path.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    write_atomically_with(path, |temporary| {
        std::fs::File::create(temporary)?.write_all(bytes)
    })
}

/// [`write_atomically`] for a writer that makes the file itself: `write` creates and fills
/// the temporary file at the path it is given, which is then synced and renamed into place
/// (or removed, if anything failed).
pub fn write_atomically_with(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let target = write_destination(path)?;
    let mut temporary = target.as_os_str().to_owned();
    temporary.push(format!(".tmp-{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let written = (|| {
        write(&temporary)?;
        std::fs::File::open(&temporary)?.sync_all()?;
        std::fs::rename(&temporary, &target)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    written
}

/// Whether `a` and `b` name the same existing file (same device and inode, symlinks followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("ditmoe-files-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_regular_file_is_replaced_and_a_new_one_created() {
        let dir = temp("regular");
        let path = dir.join("out.bin");
        write_atomically(&path, b"one").unwrap();
        write_atomically(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            1,
            "no temporary left"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_directory_or_a_fifo_is_refused_and_left_alone() {
        let dir = temp("special");
        let fifo = dir.join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a NUL-terminated path; mkfifo reads it and returns.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        for path in [dir.clone(), fifo.clone()] {
            let err = write_atomically(&path, b"x").unwrap_err().to_string();
            assert!(err.contains("not a regular file"), "{err}");
        }
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symlink_is_written_through_to_its_target() {
        let dir = temp("symlink");
        let (target, link) = (dir.join("target.bin"), dir.join("link.bin"));
        std::fs::write(&target, b"old").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new").unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
        assert!(same_file(&link, &target));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
