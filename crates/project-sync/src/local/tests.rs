//! The local copy's and the outbox's behaviour, on real files in a
//! temporary folder.

#![allow(clippy::unwrap_used)]

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::copy::{CONTENT_PREFIX, META, PARTIAL_PREFIX};
use super::digest::BUF_SIZE;
use super::fsio::{TMP_SUFFIX, file_names};
use super::outbox::unique_nanos;
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
