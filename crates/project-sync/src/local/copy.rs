//! The verified local copy of the project file: `meta.json` names the
//! current content file by its SHA-256, every read checks size and digest
//! (a copy that fails is removed, never served), and a download lands in a
//! resumable `partial-*` file that becomes current only once it verifies.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digest::{check_checksum, check_sha, check_size, sha256_hex, stream, valid_sha};
use super::fsio::{
    TMP_SUFFIX, create_dir, decode, encode, fsync_dir, io_err, read_optional, remove_matching,
    remove_optional, rename_into_place, sweep_stale, write_atomic, write_via_tmp,
};
use super::{CONFLICTS_DIR, LocalError, OUTBOX_DIR};

/// The current copy's meta file.
pub(super) const META: &str = "meta.json";
/// Prefix of the current copy's content file; the SHA-256 follows.
pub(super) const CONTENT_PREFIX: &str = "content-";
/// Prefix of a download in progress; revision and SHA-256 follow.
pub(super) const PARTIAL_PREFIX: &str = "partial-";
/// How often a verifying read looks again when `meta.json` changes under it.
const SETTLE_ATTEMPTS: usize = 3;

/// What the local copy is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CopyMeta {
    /// The project revision this copy holds.
    pub revision: u64,
    /// The election term in which that revision was committed.
    pub committed_term: u64,
    /// SHA-256 of the content, 64 lower-case hex digits.
    pub sha256: String,
    /// Size of the content in bytes.
    pub size: u64,
}

/// What [`LocalCopy::check`] found.
#[derive(Debug)]
pub enum CopyState {
    /// There is no local copy.
    Missing,
    /// The copy is whole: its content has the size and SHA-256 its meta says.
    Whole(CopyMeta),
    /// The copy failed the check and was removed; `reason` is for the caller to log.
    Discarded {
        /// The meta of the removed copy, if `meta.json` could be decoded.
        meta: Option<CopyMeta>,
        /// What was wrong with it.
        reason: LocalError,
    },
}

/// The device's local copy of the project file, in a directory of its own.
#[derive(Debug, Clone)]
pub struct LocalCopy {
    dir: PathBuf,
}

impl LocalCopy {
    /// Opens (creating if missing) the local state in `dir`, with its `outbox/`
    /// and `conflicts/`, and deletes `*.tmp` files there older than 60 seconds.
    pub fn open(dir: &Path) -> Result<LocalCopy, LocalError> {
        for d in [
            dir.to_path_buf(),
            dir.join(OUTBOX_DIR),
            dir.join(CONFLICTS_DIR),
        ] {
            create_dir(&d)?;
            sweep_stale(&d, false)?;
        }
        Ok(LocalCopy {
            dir: dir.to_path_buf(),
        })
    }

    /// The root directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The current copy's meta, after verifying that its content file exists
    /// and has the size and SHA-256 the meta says. A copy that fails the check
    /// is removed (meta and content) and `Ok(None)` returned; use
    /// [`LocalCopy::check`] to learn why. No copy → `Ok(None)`.
    pub fn current(&self) -> Result<Option<CopyMeta>, LocalError> {
        match self.check()? {
            CopyState::Whole(meta) => Ok(Some(meta)),
            CopyState::Missing | CopyState::Discarded { .. } => Ok(None),
        }
    }

    /// Like [`LocalCopy::current`], but says why a copy was discarded so the
    /// caller can log it. An I/O failure other than a missing content file is
    /// an error and discards nothing.
    pub fn check(&self) -> Result<CopyState, LocalError> {
        Ok(match self.settle(false)? {
            Settled::Missing => CopyState::Missing,
            Settled::Whole(meta, _) => CopyState::Whole(meta),
            Settled::Discarded { meta, reason } => CopyState::Discarded { meta, reason },
        })
    }

    /// The current copy's meta, trusting the files without re-hashing (cheap;
    /// for status). An undecodable `meta.json` is [`LocalError::Corrupt`].
    pub fn current_unverified(&self) -> Result<Option<CopyMeta>, LocalError> {
        let path = self.dir.join(META);
        match read_optional(&path)? {
            None => Ok(None),
            Some(raw) => parse_meta(&path, &raw).map(Some),
        }
    }

    /// Path of the current content file (`None` if there is no copy), unverified.
    pub fn content_path(&self) -> Result<Option<PathBuf>, LocalError> {
        Ok(self
            .current_unverified()?
            .map(|meta| self.content_file(&meta.sha256)))
    }

    /// Reads the whole current content, verified as in [`LocalCopy::current`]
    /// (the bytes returned are the bytes checked).
    pub fn read(&self) -> Result<Option<(CopyMeta, Vec<u8>)>, LocalError> {
        match self.settle(true)? {
            Settled::Whole(meta, bytes) => Ok(Some((meta, bytes))),
            Settled::Missing | Settled::Discarded { .. } => Ok(None),
        }
    }

    /// Starts a download of `meta` into `partial-<revision>-<sha256>`, or
    /// resumes it if that file exists: its bytes are re-hashed and
    /// [`Incoming::offset`] starts at their length (a partial longer than
    /// `meta.size` is discarded and restarted). Removes any other partial.
    pub fn begin(&self, meta: &CopyMeta) -> Result<Incoming, LocalError> {
        check_sha(&meta.sha256)?;
        let name = format!("{PARTIAL_PREFIX}{}-{}", meta.revision, meta.sha256);
        self.remove_files(|n| n.starts_with(PARTIAL_PREFIX) && n != name)?;
        let path = self.dir.join(&name);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err("open", &path))?;
        let mut hasher = Sha256::new();
        let mut offset = stream(&mut file, &path, &mut hasher, |_| Ok(()))?;
        if offset > meta.size {
            file.set_len(0).map_err(io_err("truncate", &path))?;
            hasher = Sha256::new();
            offset = 0;
        }
        file.seek(SeekFrom::Start(offset))
            .map_err(io_err("seek in", &path))?;
        Ok(Incoming {
            dir: self.dir.clone(),
            path,
            file,
            hasher,
            offset,
            meta: meta.clone(),
        })
    }

    /// Installs `data` as the current copy at once, atomically, after checking
    /// its size and SHA-256 against `meta`.
    pub fn install(&self, meta: &CopyMeta, data: &[u8]) -> Result<(), LocalError> {
        check_sha(&meta.sha256)?;
        let content = self.content_file(&meta.sha256);
        check_size(meta.size, data.len() as u64)?;
        check_checksum(&content, &meta.sha256, sha256_hex(data))?;
        write_atomic(&content, data)?;
        fsync_dir(&self.dir);
        commit(&self.dir, meta)
    }

    /// Installs a copy of the file at `path` (e.g. one an operator gives) as
    /// the current copy, atomically, checking the bytes copied against `meta`.
    /// The file at `path` is left in place.
    pub fn install_file(&self, meta: &CopyMeta, path: &Path) -> Result<(), LocalError> {
        check_sha(&meta.sha256)?;
        let content = self.content_file(&meta.sha256);
        write_via_tmp(&content, |to, tmp| {
            let mut from = File::open(path).map_err(io_err("open", path))?;
            let mut hasher = Sha256::new();
            let size = stream(&mut from, path, &mut hasher, |chunk| {
                to.write_all(chunk).map_err(io_err("write", tmp))
            })?;
            check_size(meta.size, size)?;
            check_checksum(path, &meta.sha256, hex::encode(hasher.finalize()))
        })?;
        fsync_dir(&self.dir);
        commit(&self.dir, meta)
    }

    /// The content file a copy with this SHA-256 lives in.
    fn content_file(&self, sha256: &str) -> PathBuf {
        self.dir.join(format!("{CONTENT_PREFIX}{sha256}"))
    }

    /// Verifies the copy, looking again if `meta.json` changes under the check
    /// (another process installed a copy), and removes it if it stays bad. If
    /// it keeps changing, reports no copy rather than discard a good one.
    fn settle(&self, load: bool) -> Result<Settled, LocalError> {
        for _ in 0..SETTLE_ATTEMPTS {
            match self.probe(load)? {
                Probe::Missing => return Ok(Settled::Missing),
                Probe::Whole(meta, bytes) => return Ok(Settled::Whole(meta, bytes)),
                Probe::Bad { raw, meta, reason } => {
                    if self.discard_if_unchanged(&raw, meta.as_ref())? {
                        return Ok(Settled::Discarded { meta, reason });
                    }
                }
            }
        }
        Ok(Settled::Missing)
    }

    /// One look at the copy: meta, then content checked against it.
    fn probe(&self, load: bool) -> Result<Probe, LocalError> {
        let meta_path = self.dir.join(META);
        let Some(raw) = read_optional(&meta_path)? else {
            return Ok(Probe::Missing);
        };
        let meta = match parse_meta(&meta_path, &raw) {
            Ok(meta) => meta,
            Err(reason) => {
                return Ok(Probe::Bad {
                    raw,
                    meta: None,
                    reason,
                });
            }
        };
        match check_content(&self.content_file(&meta.sha256), &meta, load)? {
            Ok(bytes) => Ok(Probe::Whole(meta, bytes)),
            Err(reason) => Ok(Probe::Bad {
                raw,
                meta: Some(meta),
                reason,
            }),
        }
    }

    /// Removes the copy if `meta.json` still holds `raw`; false if it changed.
    fn discard_if_unchanged(
        &self,
        raw: &[u8],
        meta: Option<&CopyMeta>,
    ) -> Result<bool, LocalError> {
        let meta_path = self.dir.join(META);
        if read_optional(&meta_path)?.as_deref() != Some(raw) {
            return Ok(false);
        }
        remove_optional(&meta_path)?;
        fsync_dir(&self.dir);
        if let Some(meta) = meta {
            remove_optional(&self.content_file(&meta.sha256))?;
        }
        Ok(true)
    }

    /// Removes the files directly in the root whose name `condemned` picks.
    fn remove_files(&self, condemned: impl Fn(&str) -> bool) -> Result<(), LocalError> {
        remove_matching(&self.dir, condemned)
    }
}

/// The outcome of [`LocalCopy::settle`].
enum Settled {
    Missing,
    Whole(CopyMeta, Vec<u8>),
    Discarded {
        meta: Option<CopyMeta>,
        reason: LocalError,
    },
}

/// The outcome of [`LocalCopy::probe`]; `raw` is the `meta.json` looked at.
enum Probe {
    Missing,
    Whole(CopyMeta, Vec<u8>),
    Bad {
        raw: Vec<u8>,
        meta: Option<CopyMeta>,
        reason: LocalError,
    },
}

/// A download in progress into `partial-<revision>-<sha256>`.
///
/// Dropping it keeps the partial file, so [`LocalCopy::begin`] can resume.
/// After an error from [`Incoming::write`], drop it and begin again: `begin`
/// re-hashes whatever the partial file holds.
#[derive(Debug)]
pub struct Incoming {
    dir: PathBuf,
    path: PathBuf,
    file: File,
    hasher: Sha256,
    offset: u64,
    meta: CopyMeta,
}

impl Incoming {
    /// Bytes written so far, including those found when resuming.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The copy being downloaded.
    pub fn meta(&self) -> &CopyMeta {
        &self.meta
    }

    /// Appends `data`; refuses ([`LocalError::Size`]) to go past `meta.size`.
    pub fn write(&mut self, data: &[u8]) -> Result<(), LocalError> {
        let end = self.offset.saturating_add(data.len() as u64);
        if end > self.meta.size {
            return Err(LocalError::Size {
                expected: self.meta.size,
                actual: end,
            });
        }
        self.file
            .write_all(data)
            .map_err(io_err("write", &self.path))?;
        self.hasher.update(data);
        self.offset = end;
        Ok(())
    }

    /// Checks size and SHA-256, makes the download the current copy, then
    /// deletes the previous content. A short download is [`LocalError::Size`]
    /// and its partial is kept for resuming; a wrong SHA-256 deletes the
    /// partial and is [`LocalError::Checksum`]. A crash at any point leaves
    /// either the old copy or the new one, both whole.
    pub fn finish(self) -> Result<(), LocalError> {
        let Incoming {
            dir,
            path,
            file,
            hasher,
            offset,
            meta,
        } = self;
        check_size(meta.size, offset)?;
        let actual = hex::encode(hasher.finalize());
        if let Err(e) = check_checksum(&path, &meta.sha256, actual) {
            drop(file);
            remove_optional(&path)?;
            return Err(e);
        }
        file.sync_all().map_err(io_err("fsync", &path))?;
        drop(file);
        let content = dir.join(format!("{CONTENT_PREFIX}{}", meta.sha256));
        rename_into_place(&path, &content)?;
        fsync_dir(&dir);
        commit(&dir, &meta)
    }
}

/// Makes the (already renamed into place) content of `meta` current: writes
/// `meta.json` atomically, then deletes every other content file.
fn commit(dir: &Path, meta: &CopyMeta) -> Result<(), LocalError> {
    let meta_path = dir.join(META);
    write_atomic(&meta_path, &encode(&meta_path, meta)?)?;
    fsync_dir(dir);
    let keep = format!("{CONTENT_PREFIX}{}", meta.sha256);
    remove_matching(dir, |n| {
        n.starts_with(CONTENT_PREFIX) && !n.ends_with(TMP_SUFFIX) && n != keep
    })
}

/// Decodes `meta.json` and checks that its SHA-256 can name a file.
fn parse_meta(path: &Path, raw: &[u8]) -> Result<CopyMeta, LocalError> {
    let meta: CopyMeta = decode(path, raw)?;
    if !valid_sha(&meta.sha256) {
        return Err(LocalError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("sha256 {:?} is not 64 lower-case hex digits", meta.sha256),
        });
    }
    Ok(meta)
}

/// Checks (and, if `load`, reads) the content file of `meta`. The outer error
/// is an I/O failure to report; the inner one a defect that condemns the copy.
fn check_content(
    path: &Path,
    meta: &CopyMeta,
    load: bool,
) -> Result<Result<Vec<u8>, LocalError>, LocalError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Err(io_err("open", path)(e))),
        Err(e) => return Err(io_err("open", path)(e)),
    };
    let len = file.metadata().map_err(io_err("inspect", path))?.len();
    if let Err(e) = check_size(meta.size, len) {
        return Ok(Err(e));
    }
    let mut bytes = Vec::new();
    let mut hasher = Sha256::new();
    let size = stream(&mut file, path, &mut hasher, |chunk| {
        if load {
            bytes.extend_from_slice(chunk);
        }
        Ok(())
    })?;
    let verdict = check_size(meta.size, size)
        .and_then(|()| check_checksum(path, &meta.sha256, hex::encode(hasher.finalize())));
    Ok(verdict.map(|()| bytes))
}
