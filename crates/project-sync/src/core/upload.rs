//! What a submitted change must satisfy before it may be committed, so bad
//! input is answered clearly and harmlessly: a declared size within the
//! limit, chunks that never run past the declared size, and content whose
//! SHA-256 is the one declared. Nothing is committed until [`Upload::finish`]
//! says the whole content arrived intact.

use sha2::{Digest, Sha256};

/// The largest project the server accepts: 256 MiB.
pub const MAX_PROJECT_SIZE: u64 = 256 * 1024 * 1024;

/// Why a submitted change was refused before anything was committed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UploadError {
    /// The declared size is over the limit.
    #[error("the project is {size} bytes, over the limit of {limit} bytes")]
    TooLarge {
        /// The declared size.
        size: u64,
        /// The server's limit.
        limit: u64,
    },
    /// A chunk ran past the declared size.
    #[error("a chunk ends at byte {end}, past the declared size of {size} bytes")]
    PastDeclaredSize {
        /// Where the chunk would end.
        end: u64,
        /// The declared size.
        size: u64,
    },
    /// The stream ended before the declared size arrived.
    #[error("the content ended after {received} of {size} declared bytes")]
    Truncated {
        /// Bytes received.
        received: u64,
        /// The declared size.
        size: u64,
    },
    /// The content's SHA-256 is not the declared one.
    #[error("the content's SHA-256 is {actual}, not the declared {declared}")]
    HashMismatch {
        /// What the header said.
        declared: String,
        /// What the content hashes to.
        actual: String,
    },
    /// The declared SHA-256 is not 64 lower-case hex digits.
    #[error("sha256 {value:?} is not 64 lower-case hexadecimal digits")]
    BadHash {
        /// The rejected text.
        value: String,
    },
}

/// Whether `s` is a SHA-256 in lower-case hex.
pub fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A change's content arriving in chunks, checked as it comes.
#[derive(Debug)]
pub struct Upload {
    size: u64,
    sha256: String,
    hasher: Sha256,
    data: Vec<u8>,
}

impl Upload {
    /// Starts an upload of `size` bytes hashing to `sha256`, refused at once
    /// when the size is over `limit` or the hash is malformed.
    pub fn new(size: u64, sha256: &str, limit: u64) -> Result<Upload, UploadError> {
        if size > limit {
            return Err(UploadError::TooLarge { size, limit });
        }
        if !is_sha256_hex(sha256) {
            return Err(UploadError::BadHash {
                value: sha256.chars().take(80).collect(),
            });
        }
        Ok(Upload {
            size,
            sha256: sha256.to_string(),
            hasher: Sha256::new(),
            // Reserve up front only a bounded amount: the declared size is
            // the client's word until the bytes arrive.
            data: Vec::with_capacity(size.min(16 * 1024 * 1024) as usize),
        })
    }

    /// Bytes received so far.
    pub fn received(&self) -> u64 {
        self.data.len() as u64
    }

    /// Takes the next chunk; refuses one that runs past the declared size.
    pub fn push(&mut self, chunk: &[u8]) -> Result<(), UploadError> {
        let end = self.received() + chunk.len() as u64;
        if end > self.size {
            return Err(UploadError::PastDeclaredSize {
                end,
                size: self.size,
            });
        }
        self.hasher.update(chunk);
        self.data.extend_from_slice(chunk);
        Ok(())
    }

    /// The whole content, once every declared byte arrived and the hash matches.
    pub fn finish(self) -> Result<Vec<u8>, UploadError> {
        if self.received() != self.size {
            return Err(UploadError::Truncated {
                received: self.received(),
                size: self.size,
            });
        }
        let actual = hex::encode(self.hasher.finalize());
        if actual != self.sha256 {
            return Err(UploadError::HashMismatch {
                declared: self.sha256,
                actual,
            });
        }
        Ok(self.data)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    #[test]
    fn whole_content_with_the_declared_hash_is_accepted() {
        let data = b"hello project";
        let mut u = Upload::new(data.len() as u64, &sha(data), 100).unwrap();
        u.push(&data[..5]).unwrap();
        u.push(&data[5..]).unwrap();
        assert_eq!(u.finish().unwrap(), data);
    }

    #[test]
    fn a_size_over_the_limit_is_refused_before_any_byte() {
        assert_eq!(
            Upload::new(101, &sha(b""), 100).unwrap_err(),
            UploadError::TooLarge {
                size: 101,
                limit: 100
            }
        );
    }

    #[test]
    fn a_chunk_past_the_declared_size_is_refused() {
        let mut u = Upload::new(4, &sha(b"abcd"), 100).unwrap();
        u.push(b"abc").unwrap();
        assert_eq!(
            u.push(b"de").unwrap_err(),
            UploadError::PastDeclaredSize { end: 5, size: 4 }
        );
    }

    #[test]
    fn a_hash_that_does_not_match_is_refused() {
        let mut u = Upload::new(4, &sha(b"abcd"), 100).unwrap();
        u.push(b"abce").unwrap();
        assert!(matches!(
            u.finish().unwrap_err(),
            UploadError::HashMismatch { .. }
        ));
    }

    #[test]
    fn a_short_stream_and_a_malformed_hash_are_refused() {
        let mut u = Upload::new(4, &sha(b"abcd"), 100).unwrap();
        u.push(b"ab").unwrap();
        assert_eq!(
            u.finish().unwrap_err(),
            UploadError::Truncated {
                received: 2,
                size: 4
            }
        );
        assert!(matches!(
            Upload::new(1, "XYZ", 100).unwrap_err(),
            UploadError::BadHash { .. }
        ));
    }
}
