//! The API token that mutating calls need (the control contract, docs/control.md).
//!
//! With no token configured every mutating call is refused: a gateway started
//! without one is read-only, never open. Tokens are compared over every byte,
//! whatever the first difference, so the time a refusal takes does not tell
//! how much of a guess was right.

use crate::ApiError;

/// The configured API token, or none (read-only gateway).
#[derive(Clone, Default)]
pub struct Token(Option<Vec<u8>>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str(if self.0.is_some() {
            "Token(set)"
        } else {
            "Token(none)"
        })
    }
}

impl Token {
    /// A token; an empty string counts as none.
    pub fn new(token: Option<&str>) -> Token {
        Token(
            token
                .filter(|t| !t.is_empty())
                .map(|t| t.as_bytes().to_vec()),
        )
    }

    /// Whether a token is configured.
    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Checks a presented token (`None` when none was presented).
    pub fn check(&self, presented: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(expected) = &self.0 else {
            return Err(ApiError::Unauthorized(
                "this gateway has no API token configured, so it refuses every mutating call \
                 (start it with --api-token or UNDERSTUDY_API_TOKEN)"
                    .into(),
            ));
        };
        let Some(presented) = presented else {
            return Err(ApiError::Unauthorized(
                "this call needs the API token: send `Authorization: Bearer <token>` \
                 (on TCP: {\"cmd\":\"auth\",\"token\":…} first)"
                    .into(),
            ));
        };
        if constant_time_eq(expected, presented) {
            Ok(())
        } else {
            Err(ApiError::Unauthorized("the API token is wrong".into()))
        }
    }

    /// Checks an HTTP `Authorization` header value (`Bearer <token>`).
    pub fn check_header(&self, header: Option<&[u8]>) -> Result<(), ApiError> {
        let Some(h) = header.map(trim) else {
            return self.check(None);
        };
        if h.len() >= 7 && h[..7].eq_ignore_ascii_case(b"bearer ") {
            self.check(Some(trim(&h[7..])))
        } else {
            if !self.is_set() {
                // A read-only gateway says so, whatever was presented.
                return self.check(None);
            }
            Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`".into(),
            ))
        }
    }
}

fn trim(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    &b[start..end.max(start)]
}

/// Compares every byte of both, so the time taken depends only on the lengths.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_passes() {
        let t = Token::new(Some("s3cret"));
        assert!(t.check_header(Some(b"Bearer s3cret")).is_ok());
        assert!(t.check_header(Some(b"bearer s3cret ")).is_ok());
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"s3cret",
            b"Bearer ",
            b"",
        ] {
            assert_eq!(
                t.check_header(Some(bad)).map_err(|e| e.code()),
                Err("unauthorized")
            );
        }
        assert!(t.check_header(None).is_err());
    }

    #[test]
    fn without_a_token_everything_is_refused() {
        let t = Token::new(None);
        assert!(!t.is_set());
        assert!(t.check(Some(b"")).is_err());
        assert!(!Token::new(Some("")).is_set());
    }
}
