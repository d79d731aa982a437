//! File I/O with one crash-safety pattern: write a `*.tmp` file beside the
//! target, fsync it, rename it over the target, fsync the folder. A crash
//! leaves the old file or the new one, both whole, and at worst a stray
//! `*.tmp` that [`sweep_stale`] removes once it is old.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::LocalError;

/// Suffix of every file not yet renamed into place.
pub(super) const TMP_SUFFIX: &str = ".tmp";
/// A `*.tmp` (or orphaned `.bin`) older than this belongs to no live writer.
const STALE_AGE: Duration = Duration::from_secs(60);

pub(super) fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalError {
    let path = path.to_path_buf();
    move |source| LocalError::Io { what, path, source }
}

pub(super) fn create_dir(dir: &Path) -> Result<(), LocalError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))
}

/// The file's bytes, or `None` if it does not exist.
pub(super) fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, LocalError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Removes a file; whether it was there.
pub(super) fn remove_optional(path: &Path) -> Result<bool, LocalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Names (UTF-8 ones only) of the entries in `dir`.
pub(super) fn file_names(dir: &Path) -> Result<Vec<String>, LocalError> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        if let Ok(name) = entry.file_name().into_string() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Removes the files in `dir` whose name `condemned` picks.
pub(super) fn remove_matching(
    dir: &Path,
    condemned: impl Fn(&str) -> bool,
) -> Result<(), LocalError> {
    for name in file_names(dir)? {
        if condemned(&name) {
            remove_optional(&dir.join(&name))?;
        }
    }
    Ok(())
}

/// Deletes `*.tmp` files in `dir` older than [`STALE_AGE`] and, if
/// `orphans`, `.bin` files that old with no `.json` beside them (left by a
/// crash between the two writes of an add or removal).
pub(super) fn sweep_stale(dir: &Path, orphans: bool) -> Result<(), LocalError> {
    let names = file_names(dir)?;
    let now = SystemTime::now();
    for name in &names {
        let doomed = name.ends_with(TMP_SUFFIX)
            || (orphans
                && name
                    .strip_suffix(".bin")
                    .is_some_and(|stem| !names.contains(&format!("{stem}.json"))));
        if !doomed {
            continue;
        }
        let path = dir.join(name);
        let Ok(modified) = fs::metadata(&path).and_then(|m| m.modified()) else {
            continue; // gone already, or no mtime to judge by
        };
        if now
            .duration_since(modified)
            .is_ok_and(|age| age > STALE_AGE)
        {
            remove_optional(&path)?;
        }
    }
    Ok(())
}

/// A fresh temporary name beside `path`, unique across threads and processes.
pub(super) fn tmp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.{}-{n}{TMP_SUFFIX}", std::process::id()))
}

/// Writes `path` atomically: `fill` writes the content into a fresh
/// temporary file beside it, which is then fsynced and renamed over `path`.
/// On any failure the temporary file is removed and `path` is untouched. The
/// caller fsyncs the directory (once, after its last rename). Every write of
/// the local state goes through here.
pub(super) fn write_via_tmp(
    path: &Path,
    fill: impl FnOnce(&mut File, &Path) -> Result<(), LocalError>,
) -> Result<(), LocalError> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        fill(&mut file, &tmp)?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        rename_into_place(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Renames `from` over `to`.
pub(super) fn rename_into_place(from: &Path, to: &Path) -> Result<(), LocalError> {
    fs::rename(from, to).map_err(io_err("rename into place", to))
}

/// Writes `bytes` to `path` via a fsynced temporary file and a rename. The
/// caller fsyncs the directory (once, after its last rename).
pub(super) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    write_via_tmp(path, |file, tmp| {
        file.write_all(bytes).map_err(io_err("write", tmp))
    })
}

/// Copies `from` to `to` via a fsynced temporary file and a rename.
pub(super) fn copy_atomic(from: &Path, to: &Path) -> Result<(), LocalError> {
    let mut source = File::open(from).map_err(io_err("open", from))?;
    write_via_tmp(to, |file, tmp| {
        io::copy(&mut source, file)
            .map(drop)
            .map_err(io_err("copy into", tmp))
    })
}

/// Replaces the file at `path` with `bytes` atomically and durably (a
/// temporary file beside it, fsynced, renamed over it, the folder fsynced):
/// readers see the old content or the new, never a mix, also after a crash.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    write_atomic(path, bytes)?;
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    fsync_dir(dir);
    Ok(())
}

/// Makes the directory's entries durable; ignored where a platform refuses.
pub(super) fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

pub(super) fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, LocalError> {
    serde_json::to_vec_pretty(value).map_err(|e| LocalError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("cannot encode: {e}"),
    })
}

pub(super) fn decode<T: DeserializeOwned>(path: &Path, raw: &[u8]) -> Result<T, LocalError> {
    serde_json::from_slice(raw).map_err(|e| LocalError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}
