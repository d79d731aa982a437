//! The gateway's tokens and roles (the control contract, docs/control.md).
//!
//! Two roles: the **admin** token (`--api-token`, `UNDERSTUDY_API_TOKEN`, or
//! the file `--api-token-file`) may read and change; a **read-only** token
//! (`--read-tokens-file`, `UNDERSTUDY_READ_TOKENS`) may read the group's
//! status, devices and scores and follow its events, and nothing else.
//!
//! - No token configured at all: reads are open and every write is refused
//!   (`unauthorized`): a gateway started without tokens is read-only, never
//!   open.
//! - Any token configured: every call of the API needs one. None presented,
//!   or one the gateway does not know: `unauthorized` (HTTP 401). A
//!   read-only token on a write: `forbidden` (HTTP 403).
//!
//! A presented token is compared with every configured token, each over
//! every byte, with no early exit: the time a refusal takes tells neither how
//! much of a guess was right nor which token it came close to (it depends
//! only on the lengths and on how many tokens there are).

use serde::Serialize;

use crate::ApiError;

/// What a presented token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Reads and event streams only.
    Read,
    /// Everything: reads and writes.
    Admin,
}

/// What a call needs: reading the group, or changing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Groups, status, devices, scores, event streams, the OpenAPI document.
    Read,
    /// Score and online changes, the show hold, election triggers.
    Write,
}

/// The configured tokens: at most one admin token and any number of
/// read-only ones. [`Default`] is none (reads open, writes refused).
#[derive(Clone, Default)]
pub struct Tokens {
    admin: Option<Vec<u8>>,
    read: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        f.debug_struct("Tokens")
            .field("admin", &self.admin.is_some())
            .field("read", &self.read.len())
            .finish()
    }
}

const NO_TOKENS: &str = "this gateway has no token configured, so it refuses every mutating call \
     (start it with --api-token-file or UNDERSTUDY_API_TOKEN)";
const NEEDS_TOKEN: &str = "this call needs a token: send `Authorization: Bearer <token>` \
     (on TCP: {\"cmd\":\"auth\",\"token\":…} first)";
const READ_ONLY: &str = "this token may only read: changing a score, taking a device online or \
     offline, putting the show hold on or off and triggering an election need the admin token";

impl Tokens {
    /// The admin token and the read-only tokens; empty strings count as none.
    pub fn new<S: AsRef<str>>(admin: Option<&str>, read: &[S]) -> Tokens {
        Tokens {
            admin: admin
                .filter(|t| !t.is_empty())
                .map(|t| t.as_bytes().to_vec()),
            read: read
                .iter()
                .map(AsRef::as_ref)
                .filter(|t| !t.is_empty())
                .map(|t| t.as_bytes().to_vec())
                .collect(),
        }
    }

    /// Whether any token is configured (then every API call needs one).
    pub fn is_set(&self) -> bool {
        self.admin.is_some() || !self.read.is_empty()
    }

    /// Whether an admin token is configured (else every write is refused).
    pub fn has_admin(&self) -> bool {
        self.admin.is_some()
    }

    /// How many read-only tokens are configured.
    pub fn read_only_count(&self) -> usize {
        self.read.len()
    }

    /// The role of a presented token, if it is one of the configured ones.
    /// Compares with every token, each over every byte, before deciding.
    fn role_of(&self, presented: &[u8]) -> Option<Role> {
        let presented = std::hint::black_box(presented);
        let admin = self
            .admin
            .as_deref()
            .map_or(0, |a| u8::from(constant_time_eq(a, presented)));
        let mut read = 0u8;
        for token in &self.read {
            read |= std::hint::black_box(u8::from(constant_time_eq(token, presented)));
        }
        match (admin, read) {
            (1, _) => Some(Role::Admin),
            (_, 1) => Some(Role::Read),
            _ => None,
        }
    }

    /// The role of a presented token; `unauthorized` if no token is
    /// configured or this one is not among them.
    pub fn authenticate(&self, presented: &[u8]) -> Result<Role, ApiError> {
        if !self.is_set() {
            return Err(ApiError::Unauthorized(NO_TOKENS.into()));
        }
        self.role_of(presented).ok_or_else(|| {
            ApiError::Unauthorized("the token is not one this gateway accepts".into())
        })
    }

    /// Whether a caller with `role` (`None`: no valid token presented) may
    /// make a call that needs `need`.
    pub fn permit(&self, role: Option<Role>, need: Access) -> Result<(), ApiError> {
        match (role, need) {
            (Some(Role::Admin), _) | (Some(Role::Read), Access::Read) => Ok(()),
            (Some(Role::Read), Access::Write) => Err(ApiError::Forbidden(READ_ONLY.into())),
            (None, Access::Read) if !self.is_set() => Ok(()),
            (None, Access::Write) if !self.is_set() => {
                Err(ApiError::Unauthorized(NO_TOKENS.into()))
            }
            (None, _) => Err(ApiError::Unauthorized(NEEDS_TOKEN.into())),
        }
    }

    /// Checks an HTTP `Authorization` header value (`Bearer <token>`) for a
    /// call that needs `need`; the caller's role when a token was accepted.
    pub fn check_header(
        &self,
        header: Option<&[u8]>,
        need: Access,
    ) -> Result<Option<Role>, ApiError> {
        if !self.is_set() {
            // Reads open, writes refused, whatever was presented.
            return self.permit(None, need).map(|()| None);
        }
        let Some(h) = header.map(trim) else {
            return self.permit(None, need).map(|()| None);
        };
        if h.len() < 7 || !h[..7].eq_ignore_ascii_case(b"bearer ") {
            return Err(ApiError::Unauthorized(
                "the Authorization header must be `Bearer <token>`".into(),
            ));
        }
        let role = self.authenticate(trim(&h[7..]))?;
        self.permit(Some(role), need)?;
        Ok(Some(role))
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
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code<T>(r: Result<T, ApiError>) -> Result<T, &'static str> {
        r.map_err(|e| e.code())
    }

    fn both() -> Tokens {
        Tokens::new(Some("admin-s3cret"), &["reader-1", "reader-2"])
    }

    #[test]
    fn only_an_exact_configured_token_passes() {
        let t = Tokens::new(Some("s3cret"), &[] as &[&str]);
        assert_eq!(
            code(t.check_header(Some(b"Bearer s3cret"), Access::Write)),
            Ok(Some(Role::Admin))
        );
        assert_eq!(
            code(t.check_header(Some(b"bearer s3cret "), Access::Write)),
            Ok(Some(Role::Admin))
        );
        for bad in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret2",
            b"s3cret",
            b"Bearer ",
            b"",
        ] {
            for need in [Access::Read, Access::Write] {
                assert_eq!(code(t.check_header(Some(bad), need)), Err("unauthorized"));
            }
        }
        assert_eq!(
            code(t.check_header(None, Access::Read)),
            Err("unauthorized")
        );
    }

    #[test]
    fn a_read_only_token_reads_and_is_forbidden_to_write() {
        let t = both();
        for reader in [&b"Bearer reader-1"[..], b"Bearer reader-2"] {
            assert_eq!(
                code(t.check_header(Some(reader), Access::Read)),
                Ok(Some(Role::Read))
            );
            assert_eq!(
                code(t.check_header(Some(reader), Access::Write)),
                Err("forbidden")
            );
        }
        assert_eq!(
            code(t.check_header(Some(b"Bearer admin-s3cret"), Access::Read)),
            Ok(Some(Role::Admin))
        );
        assert_eq!(
            code(t.check_header(Some(b"Bearer admin-s3cret"), Access::Write)),
            Ok(Some(Role::Admin))
        );
    }

    #[test]
    fn once_any_token_is_set_no_token_and_unknown_tokens_are_unauthorized() {
        for t in [
            both(),
            Tokens::new(None, &["reader-only"]),
            Tokens::new(Some("admin-only"), &[] as &[&str]),
        ] {
            assert!(t.is_set());
            for need in [Access::Read, Access::Write] {
                assert_eq!(code(t.check_header(None, need)), Err("unauthorized"));
                assert_eq!(
                    code(t.check_header(Some(b"Bearer nobody"), need)),
                    Err("unauthorized")
                );
                assert_eq!(code(t.permit(None, need)), Err("unauthorized"));
            }
            assert_eq!(code(t.authenticate(b"nobody")), Err("unauthorized"));
        }
    }

    #[test]
    fn with_only_read_tokens_every_write_is_forbidden_to_them() {
        let t = Tokens::new(None, &["reader-only"]);
        assert!(!t.has_admin());
        assert_eq!(code(t.authenticate(b"reader-only")), Ok(Role::Read));
        assert_eq!(
            code(t.check_header(Some(b"Bearer reader-only"), Access::Write)),
            Err("forbidden")
        );
    }

    #[test]
    fn without_any_token_reads_are_open_and_writes_refused() {
        let t = Tokens::new(None, &[""]);
        assert!(!t.is_set());
        assert!(!Tokens::new(Some(""), &[] as &[&str]).is_set());
        assert_eq!(code(t.check_header(None, Access::Read)), Ok(None));
        assert_eq!(
            code(t.check_header(Some(b"Bearer anything"), Access::Read)),
            Ok(None)
        );
        assert_eq!(
            code(t.check_header(None, Access::Write)),
            Err("unauthorized")
        );
        assert_eq!(
            code(t.check_header(Some(b"Bearer anything"), Access::Write)),
            Err("unauthorized")
        );
        assert_eq!(code(t.authenticate(b"")), Err("unauthorized"));
        assert_eq!(code(t.permit(None, Access::Read)), Ok(()));
    }

    #[test]
    fn the_admin_role_wins_and_roles_serialise_in_snake_case() {
        // The same string configured twice (the CLI refuses this) reads as admin.
        let t = Tokens::new(Some("same"), &["same"]);
        assert_eq!(code(t.authenticate(b"same")), Ok(Role::Admin));
        assert_eq!(
            serde_json::to_value(Role::Admin).expect("json"),
            serde_json::json!("admin")
        );
        assert_eq!(
            serde_json::to_value(Role::Read).expect("json"),
            serde_json::json!("read")
        );
    }

    #[test]
    fn debug_never_shows_a_token() {
        let shown = format!("{:?}", both());
        assert!(
            !shown.contains("s3cret") && !shown.contains("reader"),
            "{shown}"
        );
    }

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }
}
