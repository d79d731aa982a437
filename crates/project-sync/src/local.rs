//! A device's durable local state for the project file (DESIGN.md B11).
//!
//! B11: clients keep running on their local copy when no server is reachable;
//! changes made meanwhile are kept in a durable outbox and submitted after
//! re-election; a conflicting one is reported, not lost. This module is that
//! durability and nothing more: synchronous `std` file I/O, no network, no
//! async, so the device service and the CLI can both use it and a test can
//! drive it in a temporary directory.
//!
//! Layout under the root directory:
//!
//! ```text
//! meta.json                    CopyMeta of the current copy
//! content-<sha256>             the current copy's bytes
//! partial-<revision>-<sha256>  a download in progress (resumable)
//! outbox/<key>.bin + .json     queued changes (the .json makes the entry exist)
//! conflicts/<key>.bin + .json  changes the server refused with a conflict
//! ```
//!
//! Crash safety comes from one pattern used everywhere: write a `*.tmp` file,
//! fsync it, rename it over its final name, fsync the directory. A crash
//! leaves either the old state or the new one, both whole, and at worst a
//! stray `*.tmp` that [`LocalCopy::open`] sweeps once it is old. Several
//! processes may share the directory (the device service reads the outbox
//! while the CLI adds to it), so readers ignore `*.tmp` files and the sweep
//! spares young ones, which may belong to a writer still at work.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The current copy's meta file.
const META: &str = "meta.json";
/// Prefix of the current copy's content file; the SHA-256 follows.
const CONTENT_PREFIX: &str = "content-";
/// Prefix of a download in progress; revision and SHA-256 follow.
const PARTIAL_PREFIX: &str = "partial-";
/// Subdirectory of queued changes.
const OUTBOX_DIR: &str = "outbox";
/// Subdirectory of refused changes.
const CONFLICTS_DIR: &str = "conflicts";
/// Suffix of every file not yet renamed into place.
const TMP_SUFFIX: &str = ".tmp";
/// A `*.tmp` (or orphaned `.bin`) older than this belongs to no live writer.
const STALE_AGE: Duration = Duration::from_secs(60);
/// Read buffer for streamed hashing and copying.
const BUF_SIZE: usize = 1 << 20;
/// The longest change id.
const MAX_CHANGE_ID_LEN: usize = 64;
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

/// Why a local-state operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A file-system operation failed.
    #[error("cannot {what} {}: {source}", path.display())]
    Io {
        /// What was being done ("read", "rename into place", …).
        what: &'static str,
        /// The file or directory it was done to.
        path: PathBuf,
        /// The operating system's error.
        source: io::Error,
    },
    /// Content does not have the SHA-256 it should.
    #[error("{} has SHA-256 {actual}, expected {expected}", path.display())]
    Checksum {
        /// The file checked (for bytes given in memory, the file they were to become).
        path: PathBuf,
        /// The SHA-256 it should have.
        expected: String,
        /// The SHA-256 it has.
        actual: String,
    },
    /// Content has the wrong size, or a write would go past the expected size.
    #[error("content of {actual} bytes does not match the expected {expected} bytes")]
    Size {
        /// The size the content should have.
        expected: u64,
        /// The size it has (or would have after the refused write).
        actual: u64,
    },
    /// A file's contents cannot be decoded.
    #[error("{} is corrupt: {detail}", path.display())]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// No queued or conflicted change has this key.
    #[error("no change with key {key:?}")]
    NotFound {
        /// The key asked for.
        key: String,
    },
    /// A change id is not 1–64 of A–Z a–z 0–9 _ -.
    #[error("change id {value:?} is invalid: use 1–64 of A–Z a–z 0–9 _ -")]
    InvalidChangeId {
        /// The id given.
        value: String,
    },
    /// A SHA-256 given in a [`CopyMeta`] is not 64 lower-case hex digits.
    #[error("SHA-256 {value:?} is invalid: expected 64 lower-case hex digits")]
    InvalidSha {
        /// The value given.
        value: String,
    },
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
        let tmp = tmp_path(&content);
        let copied = (|| {
            let mut from = File::open(path).map_err(io_err("open", path))?;
            let mut to = File::create(&tmp).map_err(io_err("create", &tmp))?;
            let mut hasher = Sha256::new();
            let size = stream(&mut from, path, &mut hasher, |chunk| {
                to.write_all(chunk).map_err(io_err("write", &tmp))
            })?;
            check_size(meta.size, size)?;
            check_checksum(path, &meta.sha256, hex::encode(hasher.finalize()))?;
            to.sync_all().map_err(io_err("fsync", &tmp))?;
            fs::rename(&tmp, &content).map_err(io_err("rename into place", &content))
        })();
        if copied.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        copied?;
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
        fs::rename(&path, &content).map_err(io_err("rename into place", &content))?;
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

/// A change waiting for a server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// File stem, sorting in creation order: `{created_at_unix_nanos:020}-{change_id}`.
    pub key: String,
    /// The change's id, 1–64 of A–Z a–z 0–9 _ -; lets a server spot a resubmission.
    pub change_id: String,
    /// The revision the change was made on.
    pub base_revision: u64,
    /// SHA-256 of the changed content, lower-case hex.
    pub sha256: String,
    /// Size of the changed content in bytes.
    pub size: u64,
    /// When the change was queued, Unix milliseconds.
    pub created_at_ms: u64,
    /// Who made it (device id or tool name).
    pub changed_by: String,
}

/// A change that could not be applied: the server refused it because the
/// project had moved on (a conflict), or for another reason given in
/// `reason`, or its queued content was unreadable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConflictEntry {
    /// The refused change.
    #[serde(flatten)]
    pub entry: OutboxEntry,
    /// The server's head revision when it refused (0 when not a conflict).
    pub head_revision: u64,
    /// Why it was refused, when it was not a conflict on a stale base.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was refused, Unix milliseconds.
    pub refused_at_ms: u64,
}

/// The durable queue of changes made without a server, and the changes
/// refused with a conflict, kept until an operator resolves them.
#[derive(Debug, Clone)]
pub struct Outbox {
    outbox: PathBuf,
    conflicts: PathBuf,
}

impl Outbox {
    /// Opens (creating if missing) `outbox/` and `conflicts/` under the root
    /// `dir` shared with [`LocalCopy`], deleting `*.tmp` files and contentless
    /// `.bin` files there older than 60 seconds.
    pub fn open(dir: &Path) -> Result<Outbox, LocalError> {
        let outbox = dir.join(OUTBOX_DIR);
        let conflicts = dir.join(CONFLICTS_DIR);
        for d in [&outbox, &conflicts] {
            create_dir(d)?;
            sweep_stale(d, true)?;
        }
        Ok(Outbox { outbox, conflicts })
    }

    /// Queues a change durably and returns its entry. `change_id` `None`
    /// draws a fresh id of 32 hex digits; a given one must be valid
    /// ([`valid_change_id`]). Each call queues a new entry, even for an id
    /// already queued.
    pub fn add(
        &self,
        base_revision: u64,
        changed_by: &str,
        change_id: Option<&str>,
        data: &[u8],
    ) -> Result<OutboxEntry, LocalError> {
        let change_id = match change_id {
            Some(id) if valid_change_id(id) => id.to_owned(),
            Some(id) => {
                return Err(LocalError::InvalidChangeId {
                    value: id.to_owned(),
                });
            }
            None => fresh_change_id(),
        };
        let nanos = unique_nanos();
        let entry = OutboxEntry {
            key: format!("{nanos:020}-{change_id}"),
            change_id,
            base_revision,
            sha256: sha256_hex(data),
            size: data.len() as u64,
            created_at_ms: nanos / 1_000_000,
            changed_by: changed_by.to_owned(),
        };
        let json = json_path(&self.outbox, &entry.key);
        write_atomic(&bin_path(&self.outbox, &entry.key), data)?;
        write_atomic(&json, &encode(&json, &entry)?)?;
        fsync_dir(&self.outbox);
        Ok(entry)
    }

    /// Queued changes in creation order. An entry whose `.json` cannot be
    /// decoded is skipped.
    pub fn pending(&self) -> Result<Vec<OutboxEntry>, LocalError> {
        list_entries(&self.outbox, |e: &OutboxEntry| &e.key)
    }

    /// The entry's content, verified against its SHA-256 and size.
    pub fn content(&self, entry: &OutboxEntry) -> Result<Vec<u8>, LocalError> {
        read_verified(&self.outbox, entry)
    }

    /// Removes a submitted entry (`.json` first, then `.bin`). Removing an
    /// entry already gone is not an error.
    pub fn remove(&self, entry: &OutboxEntry) -> Result<(), LocalError> {
        check_key(&entry.key)?;
        remove_pair(&self.outbox, &entry.key).map(|_| ())
    }

    /// Moves a refused entry to `conflicts/`, keeping its content: copies the
    /// `.bin`, writes the [`ConflictEntry`] `.json`, then removes the outbox
    /// pair. A crash midway leaves the change in the outbox (and perhaps also
    /// in conflicts), never in neither.
    pub fn move_to_conflicts(
        &self,
        entry: &OutboxEntry,
        head_revision: u64,
        reason: Option<&str>,
        now_ms: u64,
    ) -> Result<ConflictEntry, LocalError> {
        check_key(&entry.key)?;
        let conflict = ConflictEntry {
            entry: entry.clone(),
            head_revision,
            reason: reason.map(str::to_owned),
            refused_at_ms: now_ms,
        };
        let from = bin_path(&self.outbox, &entry.key);
        copy_atomic(&from, &bin_path(&self.conflicts, &entry.key)).map_err(|e| match e {
            LocalError::Io { ref source, .. } if source.kind() == io::ErrorKind::NotFound => {
                LocalError::NotFound {
                    key: entry.key.clone(),
                }
            }
            other => other,
        })?;
        let json = json_path(&self.conflicts, &entry.key);
        write_atomic(&json, &encode(&json, &conflict)?)?;
        fsync_dir(&self.conflicts);
        remove_pair(&self.outbox, &entry.key)?;
        Ok(conflict)
    }

    /// Conflicted changes, oldest first. An undecodable one is skipped.
    pub fn conflicts(&self) -> Result<Vec<ConflictEntry>, LocalError> {
        list_entries(&self.conflicts, |c: &ConflictEntry| &c.entry.key)
    }

    /// Content of a conflicted change, verified against its SHA-256 and size.
    pub fn conflict_content(&self, c: &ConflictEntry) -> Result<Vec<u8>, LocalError> {
        read_verified(&self.conflicts, &c.entry)
    }

    /// Drops a conflicted change (an operator resolved it);
    /// [`LocalError::NotFound`] if there is none with this key.
    pub fn discard_conflict(&self, key: &str) -> Result<(), LocalError> {
        check_key(key)?;
        if remove_pair(&self.conflicts, key)? {
            Ok(())
        } else {
            Err(LocalError::NotFound {
                key: key.to_owned(),
            })
        }
    }
}

/// The decodable entries in `dir`, sorted by key; a `.json` whose key is not
/// its file stem counts as undecodable.
fn list_entries<T: DeserializeOwned>(
    dir: &Path,
    key_of: impl Fn(&T) -> &str,
) -> Result<Vec<T>, LocalError> {
    let mut found = Vec::new();
    for name in file_names(dir)? {
        let Some(stem) = name.strip_suffix(".json") else {
            continue;
        };
        if !valid_key(stem) {
            continue;
        }
        let path = dir.join(&name);
        let Some(raw) = read_optional(&path)? else {
            continue; // removed since it was listed
        };
        match serde_json::from_slice::<T>(&raw) {
            Ok(entry) if key_of(&entry) == stem => found.push(entry),
            _ => continue,
        }
    }
    found.sort_by(|a, b| key_of(a).cmp(key_of(b)));
    Ok(found)
}

/// Reads `<key>.bin` in `dir` and checks it against the entry.
fn read_verified(dir: &Path, entry: &OutboxEntry) -> Result<Vec<u8>, LocalError> {
    check_key(&entry.key)?;
    let path = bin_path(dir, &entry.key);
    let Some(bytes) = read_optional(&path)? else {
        return Err(LocalError::NotFound {
            key: entry.key.clone(),
        });
    };
    check_size(entry.size, bytes.len() as u64)?;
    check_checksum(&path, &entry.sha256, sha256_hex(&bytes))?;
    Ok(bytes)
}

/// Removes `<key>.json` then `<key>.bin` in `dir`; whether the `.json` was there.
fn remove_pair(dir: &Path, key: &str) -> Result<bool, LocalError> {
    let existed = remove_optional(&json_path(dir, key))?;
    fsync_dir(dir);
    remove_optional(&bin_path(dir, key))?;
    fsync_dir(dir);
    Ok(existed)
}

fn bin_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.bin"))
}

fn json_path(dir: &Path, key: &str) -> PathBuf {
    dir.join(format!("{key}.json"))
}

/// SHA-256 of bytes, lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// SHA-256 (lower-case hex) and size of a file, streamed.
pub fn sha256_file(path: &Path) -> Result<(String, u64), LocalError> {
    let mut file = File::open(path).map_err(io_err("open", path))?;
    let mut hasher = Sha256::new();
    let size = stream(&mut file, path, &mut hasher, |_| Ok(()))?;
    Ok((hex::encode(hasher.finalize()), size))
}

/// Whether `id` is a valid change id (1–64 of A–Z a–z 0–9 _ -).
pub fn valid_change_id(id: &str) -> bool {
    (1..=MAX_CHANGE_ID_LEN).contains(&id.len()) && id.bytes().all(is_id_byte)
}

fn is_id_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'-'
}

/// Whether `key` can be an entry key (and so safely a file stem).
fn valid_key(key: &str) -> bool {
    (1..=MAX_CHANGE_ID_LEN + 21).contains(&key.len()) && key.bytes().all(is_id_byte)
}

fn check_key(key: &str) -> Result<(), LocalError> {
    if valid_key(key) {
        Ok(())
    } else {
        Err(LocalError::NotFound {
            key: key.to_owned(),
        })
    }
}

/// Whether `sha` is 64 lower-case hex digits (and so safely part of a file name).
fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

fn check_sha(sha: &str) -> Result<(), LocalError> {
    if valid_sha(sha) {
        Ok(())
    } else {
        Err(LocalError::InvalidSha {
            value: sha.to_owned(),
        })
    }
}

fn check_size(expected: u64, actual: u64) -> Result<(), LocalError> {
    if expected == actual {
        Ok(())
    } else {
        Err(LocalError::Size { expected, actual })
    }
}

fn check_checksum(path: &Path, expected: &str, actual: String) -> Result<(), LocalError> {
    if actual == expected {
        Ok(())
    } else {
        Err(LocalError::Checksum {
            path: path.to_path_buf(),
            expected: expected.to_owned(),
            actual,
        })
    }
}

/// Reads `reader` to its end in 1 MiB chunks, feeding each to `hasher` and
/// `sink`; returns the number of bytes read.
fn stream(
    reader: &mut impl Read,
    path: &Path,
    hasher: &mut Sha256,
    mut sink: impl FnMut(&[u8]) -> Result<(), LocalError>,
) -> Result<u64, LocalError> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(io_err("read", path)(e)),
        };
        let chunk = &buf[..n];
        hasher.update(chunk);
        sink(chunk)?;
        total += n as u64;
    }
}

fn io_err(what: &'static str, path: &Path) -> impl FnOnce(io::Error) -> LocalError {
    let path = path.to_path_buf();
    move |source| LocalError::Io { what, path, source }
}

fn create_dir(dir: &Path) -> Result<(), LocalError> {
    fs::create_dir_all(dir).map_err(io_err("create directory", dir))
}

/// The file's bytes, or `None` if it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, LocalError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("read", path)(e)),
    }
}

/// Removes a file; whether it was there.
fn remove_optional(path: &Path) -> Result<bool, LocalError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(io_err("remove", path)(e)),
    }
}

/// Names (UTF-8 ones only) of the entries in `dir`.
fn file_names(dir: &Path) -> Result<Vec<String>, LocalError> {
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
fn remove_matching(dir: &Path, condemned: impl Fn(&str) -> bool) -> Result<(), LocalError> {
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
fn sweep_stale(dir: &Path, orphans: bool) -> Result<(), LocalError> {
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
fn tmp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!("{name}.{}-{n}{TMP_SUFFIX}", std::process::id()))
}

/// Writes `bytes` to `path` via a fsynced temporary file and a rename. The
/// caller fsyncs the directory (once, after its last rename).
fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), LocalError> {
    let tmp = tmp_path(path);
    let written = (|| {
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(bytes).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Copies `from` to `to` via a fsynced temporary file and a rename.
fn copy_atomic(from: &Path, to: &Path) -> Result<(), LocalError> {
    let mut source = File::open(from).map_err(io_err("open", from))?;
    let tmp = tmp_path(to);
    let copied = (|| {
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        io::copy(&mut source, &mut file).map_err(io_err("copy into", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, to).map_err(io_err("rename into place", to))
    })();
    if copied.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    copied
}

/// Makes the directory's entries durable; ignored where a platform refuses.
fn fsync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn encode<T: Serialize>(path: &Path, value: &T) -> Result<Vec<u8>, LocalError> {
    serde_json::to_vec_pretty(value).map_err(|e| LocalError::Corrupt {
        path: path.to_path_buf(),
        detail: format!("cannot encode: {e}"),
    })
}

fn decode<T: DeserializeOwned>(path: &Path, raw: &[u8]) -> Result<T, LocalError> {
    serde_json::from_slice(raw).map_err(|e| LocalError::Corrupt {
        path: path.to_path_buf(),
        detail: e.to_string(),
    })
}

/// Unix nanoseconds, strictly increasing within this process, so keys made
/// in one process sort in creation order even within one clock tick.
fn unique_nanos() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    let mut last = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(last.saturating_add(1));
        match LAST.compare_exchange_weak(last, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next,
            Err(seen) => last = seen,
        }
    }
}

/// A fresh change id: 32 hex digits of SHA-256 over time, process, thread
/// and a counter — unique, not secret.
fn fresh_change_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(unique_nanos().to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path = std::env::temp_dir().join(format!(
                "understudy-local-{name}-{}-{}",
                std::process::id(),
                unique_nanos()
            ));
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn meta_for(revision: u64, data: &[u8]) -> CopyMeta {
        CopyMeta {
            revision,
            committed_term: 1,
            sha256: sha256_hex(data),
            size: data.len() as u64,
        }
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names = file_names(dir).unwrap();
        names.sort();
        names
    }

    #[test]
    fn install_then_current_round_trips() {
        let tmp = TempDir::new("roundtrip");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        assert_eq!(copy.current().unwrap(), None);

        let meta = meta_for(3, b"project v3");
        copy.install(&meta, b"project v3").unwrap();

        assert_eq!(copy.current().unwrap(), Some(meta.clone()));
        assert_eq!(copy.current_unverified().unwrap(), Some(meta.clone()));
        assert_eq!(
            copy.read().unwrap(),
            Some((meta.clone(), b"project v3".to_vec()))
        );
        let path = copy.content_path().unwrap().unwrap();
        assert_eq!(fs::read(path).unwrap(), b"project v3");
        let reopened = LocalCopy::open(tmp.path()).unwrap();
        assert_eq!(reopened.current().unwrap(), Some(meta));
    }

    #[test]
    fn installing_a_new_copy_deletes_the_old_content() {
        let tmp = TempDir::new("replace");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        copy.install(&meta_for(1, b"one"), b"one").unwrap();
        let meta = meta_for(2, b"two");
        copy.install(&meta, b"two").unwrap();

        let contents: Vec<_> = names(tmp.path())
            .into_iter()
            .filter(|n| n.starts_with(CONTENT_PREFIX))
            .collect();
        assert_eq!(contents, vec![format!("{CONTENT_PREFIX}{}", meta.sha256)]);
        assert_eq!(copy.current().unwrap(), Some(meta));
    }

    #[test]
    fn install_refuses_data_that_does_not_match_its_meta() {
        let tmp = TempDir::new("install-bad");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let meta = meta_for(1, b"good");
        assert!(matches!(
            copy.install(&meta, b"evil"),
            Err(LocalError::Checksum { .. })
        ));
        assert!(matches!(
            copy.install(&meta, b"long"),
            Err(LocalError::Checksum { .. })
        ));
        assert!(matches!(
            copy.install(&meta, b"bad"),
            Err(LocalError::Size { .. })
        ));
        let mut traversal = meta.clone();
        traversal.sha256 = "../escape".into();
        assert!(matches!(
            copy.install(&traversal, b"good"),
            Err(LocalError::InvalidSha { .. })
        ));
        assert_eq!(copy.current().unwrap(), None);
    }

    #[test]
    fn install_file_copies_and_leaves_the_source() {
        let tmp = TempDir::new("install-file");
        let copy = LocalCopy::open(&tmp.path().join("state")).unwrap();
        let source = tmp.path().join("given.bin");
        fs::write(&source, b"from an operator").unwrap();
        let meta = meta_for(9, b"from an operator");

        copy.install_file(&meta, &source).unwrap();

        assert!(source.exists());
        assert_eq!(
            copy.read().unwrap(),
            Some((meta, b"from an operator".to_vec()))
        );
        let wrong = meta_for(10, b"something else entirely");
        assert!(copy.install_file(&wrong, &source).is_err());
        assert!(names(copy.dir()).iter().all(|n| !n.ends_with(TMP_SUFFIX)));
    }

    #[test]
    fn corrupted_content_makes_current_none_and_removes_the_copy() {
        let tmp = TempDir::new("corrupt");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let meta = meta_for(4, b"intact");
        copy.install(&meta, b"intact").unwrap();
        let content = copy.content_path().unwrap().unwrap();
        fs::write(&content, b"rotten").unwrap();

        assert_eq!(copy.current().unwrap(), None);
        assert!(!content.exists());
        assert!(!tmp.path().join(META).exists());
        assert_eq!(copy.current_unverified().unwrap(), None);
    }

    #[test]
    fn check_says_why_a_copy_was_discarded() {
        let tmp = TempDir::new("check");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let meta = meta_for(4, b"intact");
        copy.install(&meta, b"intact").unwrap();
        fs::write(copy.content_path().unwrap().unwrap(), b"short").unwrap();

        match copy.check().unwrap() {
            CopyState::Discarded {
                meta: Some(m),
                reason:
                    LocalError::Size {
                        expected: 6,
                        actual: 5,
                    },
            } => assert_eq!(m, meta),
            other => panic!("expected a discarded copy, got {other:?}"),
        }
        assert!(matches!(copy.check().unwrap(), CopyState::Missing));
    }

    #[test]
    fn undecodable_meta_is_discarded_by_current_and_reported_by_unverified() {
        let tmp = TempDir::new("bad-meta");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        fs::write(tmp.path().join(META), b"{not json").unwrap();

        assert!(matches!(
            copy.current_unverified(),
            Err(LocalError::Corrupt { .. })
        ));
        assert_eq!(copy.current().unwrap(), None);
        assert!(!tmp.path().join(META).exists());
    }

    #[test]
    fn finish_with_a_wrong_sha_fails_and_keeps_the_old_copy() {
        let tmp = TempDir::new("wrong-sha");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let old = meta_for(1, b"old copy");
        copy.install(&old, b"old copy").unwrap();
        let new = meta_for(2, b"new copy");

        let mut incoming = copy.begin(&new).unwrap();
        incoming.write(b"bad copy").unwrap();
        assert!(matches!(
            incoming.finish(),
            Err(LocalError::Checksum { .. })
        ));

        assert_eq!(copy.read().unwrap(), Some((old, b"old copy".to_vec())));
        assert!(
            names(tmp.path())
                .iter()
                .all(|n| !n.starts_with(PARTIAL_PREFIX))
        );
    }

    #[test]
    fn begin_write_finish_installs_the_download() {
        let tmp = TempDir::new("download");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        copy.install(&meta_for(1, b"old"), b"old").unwrap();
        let meta = meta_for(2, b"downloaded in two chunks");

        let mut incoming = copy.begin(&meta).unwrap();
        incoming.write(b"downloaded ").unwrap();
        incoming.write(b"in two chunks").unwrap();
        assert_eq!(incoming.meta(), &meta);
        incoming.finish().unwrap();

        assert_eq!(copy.current().unwrap(), Some(meta.clone()));
        assert_eq!(
            names(tmp.path()),
            vec![
                CONFLICTS_DIR.to_owned(),
                format!("{CONTENT_PREFIX}{}", meta.sha256),
                META.to_owned(),
                OUTBOX_DIR.to_owned(),
            ]
        );
    }

    #[test]
    fn a_dropped_download_resumes_from_the_bytes_already_written() {
        let tmp = TempDir::new("resume");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let data = b"0123456789abcdefghij";
        let meta = meta_for(5, data);

        let mut first = copy.begin(&meta).unwrap();
        first.write(&data[..10]).unwrap();
        drop(first);

        let mut second = copy.begin(&meta).unwrap();
        assert_eq!(second.offset(), 10);
        second.write(&data[10..]).unwrap();
        assert_eq!(second.offset(), 20);
        second.finish().unwrap();

        assert_eq!(copy.read().unwrap(), Some((meta, data.to_vec())));
    }

    #[test]
    fn a_short_download_is_refused_and_kept_for_resuming() {
        let tmp = TempDir::new("short");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let meta = meta_for(5, b"complete");
        let mut incoming = copy.begin(&meta).unwrap();
        incoming.write(b"comp").unwrap();

        assert!(matches!(
            incoming.finish(),
            Err(LocalError::Size {
                expected: 8,
                actual: 4
            })
        ));
        assert_eq!(copy.begin(&meta).unwrap().offset(), 4);
        assert_eq!(copy.current().unwrap(), None);
    }

    #[test]
    fn a_partial_longer_than_the_copy_restarts_from_zero() {
        let tmp = TempDir::new("too-long");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let meta = meta_for(5, b"tiny");
        let partial = tmp
            .path()
            .join(format!("{PARTIAL_PREFIX}5-{}", meta.sha256));
        fs::write(&partial, b"far too many bytes").unwrap();

        let mut incoming = copy.begin(&meta).unwrap();
        assert_eq!(incoming.offset(), 0);
        incoming.write(b"tiny").unwrap();
        incoming.finish().unwrap();
        assert_eq!(copy.current().unwrap(), Some(meta));
    }

    #[test]
    fn begin_removes_other_partials() {
        let tmp = TempDir::new("other-partials");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let older = meta_for(1, b"older");
        copy.begin(&older).unwrap().write(b"ol").unwrap();
        let newer = meta_for(2, b"newer");

        let _incoming = copy.begin(&newer).unwrap();

        let partials: Vec<_> = names(tmp.path())
            .into_iter()
            .filter(|n| n.starts_with(PARTIAL_PREFIX))
            .collect();
        assert_eq!(
            partials,
            vec![format!("{PARTIAL_PREFIX}2-{}", newer.sha256)]
        );
    }

    #[test]
    fn writing_past_the_expected_size_is_refused() {
        let tmp = TempDir::new("past-size");
        let copy = LocalCopy::open(tmp.path()).unwrap();
        let meta = meta_for(1, b"four");
        let mut incoming = copy.begin(&meta).unwrap();
        incoming.write(b"fo").unwrap();

        assert!(matches!(
            incoming.write(b"urs"),
            Err(LocalError::Size {
                expected: 4,
                actual: 5
            })
        ));
        assert_eq!(incoming.offset(), 2);
        incoming.write(b"ur").unwrap();
        incoming.finish().unwrap();
        assert_eq!(copy.current().unwrap(), Some(meta));
    }

    #[test]
    fn outbox_keeps_changes_in_creation_order_until_removed() {
        let tmp = TempDir::new("outbox");
        let outbox = Outbox::open(tmp.path()).unwrap();
        let a = outbox.add(1, "dev-a", Some("change-a"), b"first").unwrap();
        let b = outbox.add(1, "dev-a", None, b"second").unwrap();
        let c = outbox.add(2, "cli", Some("change_c"), b"third").unwrap();

        assert_eq!(b.change_id.len(), 32);
        assert!(valid_change_id(&b.change_id));
        assert_eq!(a.size, 5);
        assert_eq!(a.sha256, sha256_hex(b"first"));
        assert_eq!(
            outbox.pending().unwrap(),
            vec![a.clone(), b.clone(), c.clone()]
        );
        assert_eq!(outbox.content(&b).unwrap(), b"second");

        outbox.remove(&b).unwrap();
        outbox.remove(&b).unwrap();
        assert_eq!(outbox.pending().unwrap(), vec![a.clone(), c]);
        assert!(matches!(
            outbox.content(&b),
            Err(LocalError::NotFound { .. })
        ));
        assert_eq!(
            names(&tmp.path().join(OUTBOX_DIR)).len(),
            4,
            "two pairs remain, nothing else"
        );
    }

    #[test]
    fn outbox_skips_an_undecodable_entry() {
        let tmp = TempDir::new("outbox-broken");
        let outbox = Outbox::open(tmp.path()).unwrap();
        let good = outbox.add(1, "dev-a", None, b"good").unwrap();
        let dir = tmp.path().join(OUTBOX_DIR);
        fs::write(dir.join("00000000000000000001-broken.json"), b"{oops").unwrap();
        fs::write(dir.join("00000000000000000002-x.json.1-1.tmp"), b"{}").unwrap();

        assert_eq!(outbox.pending().unwrap(), vec![good]);
    }

    #[test]
    fn tampered_outbox_content_is_refused() {
        let tmp = TempDir::new("outbox-tampered");
        let outbox = Outbox::open(tmp.path()).unwrap();
        let entry = outbox.add(1, "dev-a", None, b"honest").unwrap();
        fs::write(
            tmp.path()
                .join(OUTBOX_DIR)
                .join(format!("{}.bin", entry.key)),
            b"liar!!",
        )
        .unwrap();

        assert!(matches!(
            outbox.content(&entry),
            Err(LocalError::Checksum { .. })
        ));
    }

    #[test]
    fn a_refused_change_moves_to_conflicts_with_its_content() {
        let tmp = TempDir::new("conflicts");
        let outbox = Outbox::open(tmp.path()).unwrap();
        let entry = outbox.add(3, "dev-b", Some("edit-1"), b"my edit").unwrap();

        let conflict = outbox.move_to_conflicts(&entry, 7, None, 1_234).unwrap();

        assert_eq!(conflict.entry, entry);
        assert_eq!(conflict.head_revision, 7);
        assert_eq!(conflict.refused_at_ms, 1_234);
        assert_eq!(outbox.pending().unwrap(), vec![]);
        assert!(names(&tmp.path().join(OUTBOX_DIR)).is_empty());
        assert_eq!(outbox.conflicts().unwrap(), vec![conflict.clone()]);
        assert_eq!(outbox.conflict_content(&conflict).unwrap(), b"my edit");

        outbox.discard_conflict(&entry.key).unwrap();
        assert_eq!(outbox.conflicts().unwrap(), vec![]);
        assert!(matches!(
            outbox.discard_conflict(&entry.key),
            Err(LocalError::NotFound { .. })
        ));
    }

    #[test]
    fn an_invalid_change_id_is_refused() {
        let tmp = TempDir::new("bad-id");
        let outbox = Outbox::open(tmp.path()).unwrap();
        let too_long = "x".repeat(65);
        for bad in ["", "a/b", "../x", "with space", "é", too_long.as_str()] {
            assert!(
                matches!(
                    outbox.add(1, "dev", Some(bad), b"x"),
                    Err(LocalError::InvalidChangeId { ref value }) if value == bad
                ),
                "{bad:?} was accepted"
            );
        }
        assert!(valid_change_id(&"x".repeat(64)));
        assert!(valid_change_id("Az09_-"));
        assert_eq!(outbox.pending().unwrap(), vec![]);
    }

    #[test]
    fn open_removes_stale_tmp_files_and_keeps_young_ones() {
        let tmp = TempDir::new("sweep");
        LocalCopy::open(tmp.path()).unwrap();
        let outbox_dir = tmp.path().join(OUTBOX_DIR);
        let stale = [
            tmp.path().join("meta.json.1-1.tmp"),
            outbox_dir.join("k.json.1-2.tmp"),
        ];
        let young = [
            tmp.path().join("meta.json.1-3.tmp"),
            outbox_dir.join("k.bin.1-4.tmp"),
        ];
        let long_ago = SystemTime::now() - Duration::from_secs(120);
        for path in &stale {
            File::create(path).unwrap().set_modified(long_ago).unwrap();
        }
        for path in &young {
            File::create(path).unwrap();
        }

        LocalCopy::open(tmp.path()).unwrap();

        for path in &stale {
            assert!(!path.exists(), "{} survived", path.display());
        }
        for path in &young {
            assert!(path.exists(), "{} was removed", path.display());
        }
    }

    #[test]
    fn outbox_open_removes_old_orphaned_content() {
        let tmp = TempDir::new("orphans");
        let outbox = Outbox::open(tmp.path()).unwrap();
        let kept = outbox.add(1, "dev", None, b"kept").unwrap();
        let dir = tmp.path().join(OUTBOX_DIR);
        let orphan = dir.join("00000000000000000001-orphan.bin");
        let long_ago = SystemTime::now() - Duration::from_secs(120);
        File::create(&orphan)
            .unwrap()
            .set_modified(long_ago)
            .unwrap();
        File::options()
            .write(true)
            .open(dir.join(format!("{}.bin", kept.key)))
            .unwrap()
            .set_modified(long_ago)
            .unwrap();

        let outbox = Outbox::open(tmp.path()).unwrap();

        assert!(!orphan.exists());
        assert_eq!(outbox.content(&kept).unwrap(), b"kept");
    }

    #[test]
    fn sha256_file_streams_the_same_digest_as_bytes() {
        let tmp = TempDir::new("sha-file");
        let path = tmp.path().join("f");
        let data = vec![7u8; BUF_SIZE + 3];
        fs::write(&path, &data).unwrap();
        assert_eq!(
            sha256_file(&path).unwrap(),
            (sha256_hex(&data), data.len() as u64)
        );
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
