//! The outbox: changes made while there is no server, kept durably until
//! one acknowledges them (B11), and the conflicts: changes a server refused,
//! kept with their content until an operator resolves them.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::digest::{check_checksum, check_size, sha256_hex};
use super::fsio::{
    copy_atomic, create_dir, encode, file_names, fsync_dir, read_optional, remove_optional,
    sweep_stale, write_atomic,
};
use super::{CONFLICTS_DIR, LocalError, OUTBOX_DIR};

/// The longest change id.
const MAX_CHANGE_ID_LEN: usize = 64;

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

/// Unix nanoseconds, strictly increasing within this process, so keys made
/// in one process sort in creation order even within one clock tick.
pub(super) fn unique_nanos() -> u64 {
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
/// and a counter — unique, not secret. The one scheme for every change id
/// the workspace makes up (the outbox's and the CLI's).
pub fn fresh_change_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = Sha256::new();
    hasher.update(unique_nanos().to_le_bytes());
    hasher.update(std::process::id().to_le_bytes());
    hasher.update(format!("{:?}", std::thread::current().id()).as_bytes());
    hasher.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let digest = hasher.finalize();
    hex::encode(&digest[..16])
}
