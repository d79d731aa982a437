//! What content must be: its size and SHA-256, checked while streaming so a
//! 256 MiB project never has to sit in memory to be verified.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use sha2::{Digest, Sha256};

use super::LocalError;
use super::fsio::io_err;

/// Read buffer for streamed hashing and copying.
pub(super) const BUF_SIZE: usize = 1 << 20;

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

/// Whether `sha` is 64 lower-case hex digits (and so safely part of a file name).
pub(super) fn valid_sha(sha: &str) -> bool {
    sha.len() == 64 && sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

pub(super) fn check_sha(sha: &str) -> Result<(), LocalError> {
    if valid_sha(sha) {
        Ok(())
    } else {
        Err(LocalError::InvalidSha {
            value: sha.to_owned(),
        })
    }
}

pub(super) fn check_size(expected: u64, actual: u64) -> Result<(), LocalError> {
    if expected == actual {
        Ok(())
    } else {
        Err(LocalError::Size { expected, actual })
    }
}

pub(super) fn check_checksum(
    path: &Path,
    expected: &str,
    actual: String,
) -> Result<(), LocalError> {
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
pub(super) fn stream(
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
