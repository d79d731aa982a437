//! The project's durable home in JetStream (S2).
//!
//! - The **head** is key `head` of the KV bucket `understudy-project-<group>`,
//!   changed only by compare-and-set: [`ProjectStore::create_head`] when there
//!   is none, [`ProjectStore::update_head`] on the KV revision last read or
//!   written. A refused compare-and-set is [`CasError::Conflict`]: someone else
//!   (a newer server) wrote the head.
//! - The **content** of each revision is an object named `sha256-<hex>` in the
//!   object store of the same name, written before the head names it, so a
//!   head never points at content that is not there. Objects no recent head
//!   names are pruned by the server.
//!
//! Every call is bounded by a timeout: a bus that vanishes mid-operation
//! gives an error, never a hang.

use std::collections::BTreeSet;
use std::time::Duration;

use async_nats::jetstream::{self, kv, object_store};
use futures::StreamExt;
use tokio::io::AsyncReadExt;
use understudy_protocol::messages::{self, ProjectHead};
use understudy_protocol::{GroupName, subjects};

use crate::local::sha256_hex;

/// Object chunks of 256 KiB (nats-server's default payload limit is 1 MiB).
const CHUNK: usize = 256 * 1024;

/// Why a store call failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// JetStream did not answer in time.
    #[error("JetStream did not answer within {0:?} ({1})")]
    Timeout(Duration, &'static str),
    /// JetStream answered with an error.
    #[error("{what}: {detail}")]
    JetStream {
        /// What was being done.
        what: &'static str,
        /// The error.
        detail: String,
    },
    /// The stored head could not be decoded.
    #[error("the stored project head is unreadable: {0}")]
    BadHead(String),
    /// Stored content does not match its name.
    #[error("stored content {name} hashes to {actual}")]
    BadContent {
        /// The object.
        name: String,
        /// What it hashes to.
        actual: String,
    },
}

/// Why a compare-and-set of the head failed.
#[derive(Debug, thiserror::Error)]
pub enum CasError {
    /// The head changed since it was read: someone else wrote it.
    #[error("the project head changed since it was read (compare-and-set refused)")]
    Conflict,
    /// The outcome is unknown (timeout, bus gone): read the head to learn it.
    #[error("{0}")]
    Failed(StoreError),
}

/// A group's project head and content in JetStream.
#[derive(Clone)]
pub struct ProjectStore {
    kv: kv::Store,
    objects: object_store::ObjectStore,
    timeout: Duration,
}

fn js_err(what: &'static str) -> impl Fn(String) -> StoreError {
    move |detail| StoreError::JetStream { what, detail }
}

async fn bounded<T>(
    timeout: Duration,
    what: &'static str,
    fut: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| StoreError::Timeout(timeout, what))?
}

/// The object name of content with this SHA-256.
pub fn object_name(sha256: &str) -> String {
    format!("sha256-{sha256}")
}

impl ProjectStore {
    /// Opens the group's head bucket and object store, creating them (with
    /// `replicas` copies) when they do not exist.
    pub async fn open(
        js: &jetstream::Context,
        group: &GroupName,
        replicas: usize,
        timeout: Duration,
    ) -> Result<ProjectStore, StoreError> {
        let name = subjects::project_bucket(group);
        let kv = bounded(timeout * 2, "opening the head bucket", async {
            match js.get_key_value(&name).await {
                Ok(s) => Ok(s),
                Err(_) => js
                    .create_key_value(kv::Config {
                        bucket: name.clone(),
                        description: format!("understudy project head of group {group}"),
                        history: 1,
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: replicas.max(1),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .map_err(js_err("cannot create the head bucket")),
            }
        })
        .await?;
        let objects = bounded(timeout * 2, "opening the object store", async {
            match js.get_object_store(&name).await {
                Ok(s) => Ok(s),
                Err(_) => js
                    .create_object_store(object_store::Config {
                        bucket: name.clone(),
                        description: Some(format!("understudy project content of group {group}")),
                        storage: jetstream::stream::StorageType::File,
                        num_replicas: replicas.max(1),
                        ..Default::default()
                    })
                    .await
                    .map_err(|e| e.to_string())
                    .map_err(js_err("cannot create the object store")),
            }
        })
        .await?;
        Ok(ProjectStore {
            kv,
            objects,
            timeout,
        })
    }

    /// Opens the head bucket only, for reading (tools): `None` when the group
    /// has no project bucket yet.
    pub async fn read_only_head(
        js: &jetstream::Context,
        group: &GroupName,
        timeout: Duration,
    ) -> Result<Option<(u64, ProjectHead)>, StoreError> {
        let name = subjects::project_bucket(group);
        let kv = match tokio::time::timeout(timeout, js.get_key_value(&name)).await {
            Err(_) => return Err(StoreError::Timeout(timeout, "opening the head bucket")),
            Ok(Err(_)) => return Ok(None),
            Ok(Ok(kv)) => kv,
        };
        read_head_from(&kv, timeout).await
    }

    /// The head and its KV revision; `None` before the first server fenced.
    pub async fn read_head(&self) -> Result<Option<(u64, ProjectHead)>, StoreError> {
        read_head_from(&self.kv, self.timeout).await
    }

    /// Writes the first head; [`CasError::Conflict`] if one exists.
    pub async fn create_head(&self, head: &ProjectHead) -> Result<u64, CasError> {
        let value = messages::encode(head).into();
        match tokio::time::timeout(
            self.timeout,
            self.kv.create(subjects::PROJECT_HEAD_KEY, value),
        )
        .await
        {
            Err(_) => Err(CasError::Failed(StoreError::Timeout(
                self.timeout,
                "creating the head",
            ))),
            Ok(Ok(rev)) => Ok(rev),
            Ok(Err(e)) if e.kind() == kv::CreateErrorKind::AlreadyExists => Err(CasError::Conflict),
            Ok(Err(e)) => Err(CasError::Failed(StoreError::JetStream {
                what: "cannot create the head",
                detail: e.to_string(),
            })),
        }
    }

    /// Replaces the head if its KV revision is still `revision`.
    pub async fn update_head(&self, head: &ProjectHead, revision: u64) -> Result<u64, CasError> {
        let value = messages::encode(head).into();
        match tokio::time::timeout(
            self.timeout,
            self.kv.update(subjects::PROJECT_HEAD_KEY, value, revision),
        )
        .await
        {
            Err(_) => Err(CasError::Failed(StoreError::Timeout(
                self.timeout,
                "updating the head",
            ))),
            Ok(Ok(rev)) => Ok(rev),
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                Err(CasError::Conflict)
            }
            Ok(Err(e)) => Err(CasError::Failed(StoreError::JetStream {
                what: "cannot update the head",
                detail: e.to_string(),
            })),
        }
    }

    /// Stores content under its SHA-256 (nothing to do when it is there).
    /// The timeout grows with the size (at least about 4 MB/s is assumed).
    pub async fn put_content(&self, sha256: &str, data: &[u8]) -> Result<(), StoreError> {
        let name = object_name(sha256);
        if let Ok(Ok(info)) = tokio::time::timeout(self.timeout, self.objects.info(&name)).await
            && info.size == data.len()
            && !info.deleted
        {
            return Ok(());
        }
        let timeout = self.timeout + content_allowance(data.len() as u64);
        let meta = object_store::ObjectMetadata {
            name: name.clone(),
            chunk_size: Some(CHUNK),
            ..Default::default()
        };
        let mut reader = data;
        bounded(timeout, "storing the content", async {
            self.objects
                .put(meta, &mut reader)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string())
                .map_err(js_err("cannot store the content"))
        })
        .await
    }

    /// Reads the content with this SHA-256 and checks it.
    pub async fn get_content(&self, sha256: &str, size: u64) -> Result<Vec<u8>, StoreError> {
        let name = object_name(sha256);
        let timeout = self.timeout + content_allowance(size);
        let data = bounded(timeout, "reading the content", async {
            let mut object = self
                .objects
                .get(&name)
                .await
                .map_err(|e| e.to_string())
                .map_err(js_err("cannot read the content"))?;
            let mut data = Vec::with_capacity(size.min(256 * 1024 * 1024) as usize);
            object
                .read_to_end(&mut data)
                .await
                .map_err(|e| e.to_string())
                .map_err(js_err("cannot read the content"))?;
            Ok(data)
        })
        .await?;
        let actual = sha256_hex(&data);
        if actual != sha256 {
            return Err(StoreError::BadContent { name, actual });
        }
        Ok(data)
    }

    /// Deletes every content object whose SHA-256 is not in `keep` and that
    /// was last written more than `min_age` ago (by the store's clock): an
    /// object a commit has just stored, perhaps by another server, is kept.
    pub async fn prune(
        &self,
        keep: &BTreeSet<String>,
        min_age: Duration,
    ) -> Result<usize, StoreError> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let old_enough = |info: &object_store::ObjectInfo| match info.modified {
            Some(at) => now.saturating_sub(at.unix_timestamp()) >= min_age.as_secs() as i64,
            None => false,
        };
        let names = bounded(self.timeout * 4, "listing the content", async {
            let mut list = self
                .objects
                .list()
                .await
                .map_err(|e| e.to_string())
                .map_err(js_err("cannot list the content"))?;
            let mut names = Vec::new();
            while let Some(info) = list.next().await {
                match info {
                    Ok(info) if !info.deleted && old_enough(&info) => names.push(info.name),
                    Ok(_) => {}
                    Err(e) => {
                        return Err(StoreError::JetStream {
                            what: "cannot list the content",
                            detail: e.to_string(),
                        });
                    }
                }
            }
            Ok(names)
        })
        .await?;
        let mut removed = 0;
        for name in names {
            let sha = name.strip_prefix("sha256-").unwrap_or(&name);
            if keep.contains(sha) {
                continue;
            }
            bounded(self.timeout, "pruning the content", async {
                self.objects
                    .delete(&name)
                    .await
                    .map_err(|e| e.to_string())
                    .map_err(js_err("cannot prune the content"))
            })
            .await?;
            removed += 1;
        }
        Ok(removed)
    }
}

async fn read_head_from(
    kv: &kv::Store,
    timeout: Duration,
) -> Result<Option<(u64, ProjectHead)>, StoreError> {
    let entry = bounded(timeout, "reading the head", async {
        kv.entry(subjects::PROJECT_HEAD_KEY)
            .await
            .map_err(|e| e.to_string())
            .map_err(js_err("cannot read the head"))
    })
    .await?;
    match entry {
        None => Ok(None),
        Some(e) if e.operation != kv::Operation::Put => Ok(None),
        Some(e) => messages::decode::<ProjectHead>(&e.value)
            .map(|h| Some((e.revision, h)))
            .map_err(|err| StoreError::BadHead(err.to_string())),
    }
}

/// Extra time a content transfer of `size` bytes gets beyond the call
/// timeout: 1 ms per 4 KB, i.e. it fails only below about 4 MB/s (a busy
/// or slow store still finishes; a hung one is still noticed).
fn content_allowance(size: u64) -> Duration {
    Duration::from_millis(size / 4_000)
}
