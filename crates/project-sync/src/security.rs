//! Securing the project service: TLS (rustls with the ring provider) and the
//! check that a caller is a device of the group.
//!
//! [`ProjectSecurity`] holds the settings as given (file paths, a token);
//! loading it reads and checks every file at once, so a misconfiguration is
//! an error at start naming the file, not a refused call later:
//!
//! - [`ProjectSecurity::server`]: the device's gRPC server — TLS with its
//!   certificate and key, and a [`CallerCheck`] run before every call
//!   (describe, fetch, submit, watch).
//! - [`ProjectSecurity::client`]: whoever dials a server (devices, the CLI,
//!   the bench) — TLS trusting the CA file, the group token in every call's
//!   metadata (`authorization: Bearer <token>`), and the certificate and key
//!   as a client certificate (mutual TLS) when given.
//! - [`ProjectSecurity::device`]: both, for a device, which serves and dials:
//!   the certificate, its key and the CA come together or not at all.
//!
//! **The caller check.** A caller is a device of the group when it presents
//! the group token, or a client certificate that the CA file signed (checked
//! in the TLS handshake: a certificate from any other CA fails the handshake
//! and the connection carries nothing). Without either: `UNAUTHENTICATED`; a
//! token that is not the group's: `PERMISSION_DENIED` (even alongside a good
//! certificate). Tokens are compared in constant time (SHA-256 of both, then
//! every byte). Nothing configured (no token, no CA): no check — the service
//! is as open as before.
//!
//! **The server's name.** A client checks the server's certificate against
//! the host of the address the lease advertises — usually an IP address, so
//! every device's certificate carries its own IP as a subject alternative
//! name. With [`ProjectSecurity::tls_server_name`] the client checks that DNS
//! name instead, whatever the address: one name all the devices' certificates
//! carry.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

/// The metadata key a caller's token travels in.
pub const AUTHORIZATION: &str = "authorization";

/// A TLS handshake that takes longer than this is dropped (a client that
/// opens connections and says nothing holds no resources for long).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the project service is secured, as configured (paths and a token).
/// Every field is optional; nothing given is the plain, unchecked service.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProjectSecurity {
    /// This device's certificate (PEM): the server's, and the client
    /// certificate it presents when it dials (mutual TLS).
    pub tls_cert: Option<PathBuf>,
    /// The certificate's private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): trusted for servers' certificates and for
    /// callers' client certificates.
    pub tls_ca: Option<PathBuf>,
    /// The DNS name to check servers' certificates against, instead of the
    /// host of the advertised address.
    pub tls_server_name: Option<String>,
    /// The group token.
    pub token: Option<String>,
    /// A file holding the group token (surrounding white space ignored).
    pub token_file: Option<PathBuf>,
}

impl fmt::Debug for ProjectSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectSecurity")
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("tls_ca", &self.tls_ca)
            .field("tls_server_name", &self.tls_server_name)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .field("token_file", &self.token_file)
            .finish()
    }
}

/// The project service's TLS or token settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    /// A combination that cannot work.
    #[error("project service settings: {0}")]
    Conflict(String),
    /// A file that cannot be read.
    #[error("cannot read {what} {path}: {source}")]
    Read {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file whose content is not what it should be.
    #[error("{what} {path} is unusable: {detail}")]
    Invalid {
        /// Which setting.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        detail: String,
    },
    /// A token that cannot be used.
    #[error("the project group token {0}")]
    Token(&'static str),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, SecurityError> {
    std::fs::read(path).map_err(|source| SecurityError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM file that must hold `marker` (`CERTIFICATE`, `PRIVATE KEY`).
fn read_pem(what: &'static str, path: &Path, marker: &str) -> Result<Vec<u8>, SecurityError> {
    let pem = read(what, path)?;
    let text = String::from_utf8_lossy(&pem);
    if !text
        .lines()
        .any(|l| l.starts_with("-----BEGIN ") && l.contains(marker))
    {
        return Err(SecurityError::Invalid {
            what,
            path: path.to_path_buf(),
            detail: format!("no PEM block with {marker} in it"),
        });
    }
    Ok(pem)
}

impl ProjectSecurity {
    /// Whether nothing is configured (the plain, unchecked service).
    pub fn is_plain(&self) -> bool {
        *self == ProjectSecurity::default()
    }

    /// The group token, from [`token`](Self::token) or
    /// [`token_file`](Self::token_file) (not both).
    fn load_token(&self) -> Result<Option<String>, SecurityError> {
        let token = match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => {
                return Err(SecurityError::Conflict(
                    "give the group token once: a file (--project-token-file) or a variable (UNDERSTUDY_PROJECT_TOKEN), not both".into(),
                ));
            }
            (Some(t), None) => t.trim().to_owned(),
            (None, Some(path)) => {
                let bytes = read("the project token file", path)?;
                String::from_utf8(bytes)
                    .map_err(|_| SecurityError::Invalid {
                        what: "the project token file",
                        path: path.clone(),
                        detail: "it is not text".into(),
                    })?
                    .trim()
                    .to_owned()
            }
            (None, None) => return Ok(None),
        };
        if token.is_empty() {
            return Err(SecurityError::Token("is empty"));
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(SecurityError::Token(
                "must be printable ASCII without spaces (it travels in gRPC metadata)",
            ));
        }
        Ok(Some(token))
    }

    /// The certificate and key as a TLS identity, if given (both or neither).
    fn identity(&self) -> Result<Option<Identity>, SecurityError> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(c), Some(k)) => Ok(Some(Identity::from_pem(
                read_pem("the project TLS certificate", c, "CERTIFICATE")?,
                read_pem("the project TLS key", k, "PRIVATE KEY")?,
            ))),
            (None, None) => Ok(None),
            _ => Err(SecurityError::Conflict(
                "a certificate needs its key and a key its certificate (--project-tls-cert, --project-tls-key)".into(),
            )),
        }
    }

    fn ca(&self) -> Result<Option<Certificate>, SecurityError> {
        self.tls_ca
            .as_deref()
            .map(|p| read_pem("the project CA file", p, "CERTIFICATE").map(Certificate::from_pem))
            .transpose()
    }

    /// The server side: TLS when a certificate and key are given, and the
    /// caller check when a token or a CA is.
    pub fn server(&self) -> Result<ServerSecurity, SecurityError> {
        let token = self.load_token()?;
        let identity = self.identity()?;
        let ca = self.ca()?;
        let Some(identity) = identity else {
            if token.is_some() || ca.is_some() {
                return Err(SecurityError::Conflict(
                    "the group token and the CA need TLS on the project service: give --project-tls-cert and --project-tls-key (a token would cross the network in clear)".into(),
                ));
            }
            return Ok(ServerSecurity::default());
        };
        let mut tls = ServerTlsConfig::new()
            .identity(identity)
            .timeout(HANDSHAKE_TIMEOUT);
        let certs = ca.is_some();
        if let Some(ca) = ca {
            // A client certificate is one way in, the token the other: a
            // client may come without one, but one from another CA fails
            // the handshake.
            tls = tls.client_ca_root(ca).client_auth_optional(true);
        }
        if let Err(e) = tonic::transport::Server::builder().tls_config(tls.clone()) {
            return Err(SecurityError::Invalid {
                what: "the project TLS certificate and key",
                path: self.tls_cert.clone().unwrap_or_default(),
                detail: error_chain(&e),
            });
        }
        Ok(ServerSecurity {
            tls: Some(tls),
            check: CallerCheck {
                token: token.as_deref().map(token_digest),
                certs,
            },
        })
    }

    /// The client side: TLS when a CA is given (trusting it), the group
    /// token and the client certificate when given.
    pub fn client(&self) -> Result<ClientSecurity, SecurityError> {
        let token = self.load_token()?;
        let identity = self.identity()?;
        let Some(ca) = self.ca()? else {
            let what = match (&token, &identity, &self.tls_server_name) {
                (Some(_), _, _) => "the group token is sent only over TLS",
                (_, Some(_), _) => "a client certificate is presented only over TLS",
                (_, _, Some(_)) => "a server name is checked only over TLS",
                _ => return Ok(ClientSecurity::default()),
            };
            return Err(SecurityError::Conflict(format!(
                "{what}: give --project-tls-ca, the CA that signed the servers' certificates"
            )));
        };
        let mut tls = ClientTlsConfig::new().ca_certificate(ca);
        if let Some(name) = &self.tls_server_name {
            tls = tls.domain_name(name.clone());
        }
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        if let Err(e) = Endpoint::from_static("https://127.0.0.1:1").tls_config(tls.clone()) {
            return Err(SecurityError::Invalid {
                what: "the project TLS files",
                path: self.tls_ca.clone().unwrap_or_default(),
                detail: error_chain(&e),
            });
        }
        let token = match token {
            None => None,
            Some(t) => {
                let mut v: MetadataValue<Ascii> = format!("Bearer {t}")
                    .parse()
                    .map_err(|_| SecurityError::Token("cannot be sent as gRPC metadata"))?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(ClientSecurity {
            tls: Some(tls),
            token: BearerToken(token),
        })
    }

    /// A device's two sides. A device serves and dials the other devices'
    /// servers, so its certificate, key and CA come together or not at all.
    pub fn device(&self) -> Result<DeviceSecurity, SecurityError> {
        let server = self.server()?;
        if server.tls.is_some() && self.tls_ca.is_none() {
            return Err(SecurityError::Conflict(
                "a device also dials the other devices' project servers: give --project-tls-ca (the CA that signed their certificates) with --project-tls-cert".into(),
            ));
        }
        Ok(DeviceSecurity {
            client: self.client()?,
            server,
        })
    }
}

/// An error and its causes on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !out.contains(&s_text) {
            out.push_str(": ");
            out.push_str(&s_text);
        }
        source = s.source();
    }
    out
}

fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

/// Compares two digests in constant time: every byte, whatever differs.
fn same_digest(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let diff = a
        .iter()
        .zip(b.iter())
        .fold(0u8, |acc, (x, y)| acc | std::hint::black_box(x ^ y));
    std::hint::black_box(diff) == 0
}

/// The server side of a device, loaded.
#[derive(Clone, Default)]
pub struct ServerSecurity {
    tls: Option<ServerTlsConfig>,
    check: CallerCheck,
}

impl fmt::Debug for ServerSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerSecurity")
            .field("tls", &self.tls.is_some())
            .field("check", &self.check)
            .finish()
    }
}

impl ServerSecurity {
    /// The TLS settings of the server, if it speaks TLS.
    pub fn tls(&self) -> Option<&ServerTlsConfig> {
        self.tls.as_ref()
    }

    /// The check run before every call.
    pub fn check(&self) -> &CallerCheck {
        &self.check
    }

    /// How the service is secured, in words for the log.
    pub fn describe(&self) -> &'static str {
        match (
            self.tls.is_some(),
            self.check.token.is_some(),
            self.check.certs,
        ) {
            (false, _, _) => "plain gRPC, no TLS, callers not checked",
            (true, false, false) => "TLS, callers not checked",
            (true, true, false) => "TLS, callers checked by the group token",
            (true, false, true) => "TLS, callers checked by client certificate",
            (true, true, true) => "TLS, callers checked by the group token or client certificate",
        }
    }
}

/// The check that a caller is a device of the group, run before every call
/// of the service (a tonic [`Interceptor`]). See the module docs.
#[derive(Clone, Default)]
pub struct CallerCheck {
    /// The SHA-256 of the group token, when one is required.
    token: Option<[u8; 32]>,
    /// Whether a client certificate (verified against the CA in the
    /// handshake) lets a caller in.
    certs: bool,
}

impl fmt::Debug for CallerCheck {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CallerCheck")
            .field("token", &self.token.map(|_| "<hidden>"))
            .field("certs", &self.certs)
            .finish()
    }
}

impl CallerCheck {
    /// A check that lets in the holders of `token`, and of client
    /// certificates the server's CA verified when `certs`.
    pub fn new(token: Option<&str>, certs: bool) -> CallerCheck {
        CallerCheck {
            token: token.map(token_digest),
            certs,
        }
    }

    /// Whether any caller is let in unchecked.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && !self.certs
    }

    /// Lets a caller in, or says why not (see the module docs).
    pub fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if self.is_open() {
            return Ok(());
        }
        let presented = match request.metadata().get(AUTHORIZATION) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(|s| s.strip_prefix("Bearer ")) {
                Some(t) => Some(t.trim()),
                None => {
                    return Err(Status::unauthenticated(
                        "the authorization metadata is not `Bearer <group token>`",
                    ));
                }
            },
        };
        if let Some(token) = presented {
            return match &self.token {
                Some(expected) if same_digest(&token_digest(token), expected) => Ok(()),
                _ => Err(Status::permission_denied(
                    "the token presented is not this group's: nothing is served",
                )),
            };
        }
        if self.certs && request.peer_certs().is_some_and(|c| !c.is_empty()) {
            return Ok(());
        }
        Err(Status::unauthenticated(
            match (self.token.is_some(), self.certs) {
                (true, true) => {
                    "a device of the group must present the group token (authorization: Bearer) or a client certificate signed by the group's CA"
                }
                (true, false) => {
                    "a device of the group must present the group token (authorization: Bearer)"
                }
                _ => {
                    "a device of the group must present a client certificate signed by the group's CA"
                }
            },
        ))
    }
}

impl Interceptor for CallerCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        match self.admit(&request) {
            Ok(()) => Ok(request),
            Err(status) => {
                let peer = request.remote_addr();
                tracing::debug!(?peer, code = ?status.code(), "a project call was refused: {}", status.message());
                Err(status)
            }
        }
    }
}

/// The client side, loaded: how to dial a server.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    tls: Option<ClientTlsConfig>,
    token: BearerToken,
}

impl fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // ClientTlsConfig's own Debug would print the private key.
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls.is_some())
            .field("token", &self.token)
            .finish()
    }
}

impl ClientSecurity {
    /// Plain gRPC, no token.
    pub fn plain() -> ClientSecurity {
        ClientSecurity::default()
    }

    /// Whether calls go over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The endpoint for `address` (`host:port`), with TLS when configured.
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, String> {
        match &self.tls {
            None => Endpoint::from_shared(format!("http://{address}")).map_err(|e| e.to_string()),
            Some(tls) => Endpoint::from_shared(format!("https://{address}"))
                .and_then(|e| e.tls_config(tls.clone()))
                .map_err(|e| error_chain(&e)),
        }
    }

    /// The interceptor that puts the token into every call.
    pub fn token(&self) -> BearerToken {
        self.token.clone()
    }
}

/// Puts `authorization: Bearer <token>` into every call (nothing when
/// there is no token).
#[derive(Clone, Default)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl fmt::Debug for BearerToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "<hidden>" } else { "None" })
    }
}

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            request.metadata_mut().insert(AUTHORIZATION, v.clone());
        }
        Ok(request)
    }
}

/// A device's two sides, loaded ([`ProjectSecurity::device`]).
#[derive(Debug, Clone, Default)]
pub struct DeviceSecurity {
    /// Its gRPC server.
    pub server: ServerSecurity,
    /// How it dials the group's server.
    pub client: ClientSecurity,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tonic::Code;

    fn call(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert(AUTHORIZATION, t.parse().expect("ascii"));
        }
        r
    }

    #[test]
    fn the_check_lets_in_the_group_token_only() {
        let mut check = CallerCheck::new(Some("group-token-1"), false);
        let code = |r: Result<Request<()>, Status>| r.err().map(|s| s.code());
        assert_eq!(code(check.call(call(Some("Bearer group-token-1")))), None);
        assert_eq!(
            code(check.call(call(None))),
            Some(Code::Unauthenticated),
            "no credentials"
        );
        assert_eq!(
            code(check.call(call(Some("Bearer group-token-2")))),
            Some(Code::PermissionDenied),
            "a wrong token"
        );
        assert_eq!(
            code(check.call(call(Some("Bearer group-token-")))),
            Some(Code::PermissionDenied),
            "a prefix of the token"
        );
        assert_eq!(
            code(check.call(call(Some("Basic group-token-1")))),
            Some(Code::Unauthenticated),
            "not a bearer token"
        );
        // Without TLS there are no peer certificates: a certificate-only
        // check refuses a caller with nothing.
        let mut certs_only = CallerCheck::new(None, true);
        assert_eq!(
            code(certs_only.call(call(None))),
            Some(Code::Unauthenticated)
        );
        assert_eq!(
            code(certs_only.call(call(Some("Bearer anything")))),
            Some(Code::PermissionDenied)
        );
        let mut open = CallerCheck::default();
        assert!(open.is_open());
        assert_eq!(code(open.call(call(None))), None);
    }

    #[test]
    fn the_refusals_do_not_echo_the_token() {
        let check = CallerCheck::new(Some("s3cret-group-token"), true);
        let status = check.admit(&call(Some("Bearer s3cret-guess"))).unwrap_err();
        assert!(!status.message().contains("s3cret"), "{}", status.message());
        assert!(!format!("{check:?}").contains("s3cret"));
    }

    #[test]
    fn digests_compare_equal_only_when_equal() {
        let a = token_digest("a");
        assert!(same_digest(&a, &token_digest("a")));
        assert!(!same_digest(&a, &token_digest("b")));
        let mut last = a;
        last[31] ^= 1;
        assert!(!same_digest(&a, &last));
    }

    #[test]
    fn the_bearer_token_goes_into_every_call_hidden_from_debug() {
        let s = ProjectSecurity {
            tls_ca: None,
            token: Some("tok-123".into()),
            ..ProjectSecurity::default()
        };
        assert!(!format!("{s:?}").contains("tok-123"));
        let mut token = BearerToken(Some("Bearer tok-123".parse().unwrap()));
        let r = token.call(Request::new(())).unwrap();
        assert_eq!(
            r.metadata().get(AUTHORIZATION).unwrap().to_str().unwrap(),
            "Bearer tok-123"
        );
        assert!(!format!("{token:?}").contains("tok-123"));
    }

    fn conflict<T: fmt::Debug>(r: Result<T, SecurityError>) -> String {
        match r {
            Err(SecurityError::Conflict(m)) => m,
            other => panic!("expected a conflict, got {other:?}"),
        }
    }

    #[test]
    fn misconfigurations_are_refused_at_load_naming_the_setting() {
        let dir = std::env::temp_dir().join(format!("understudy-sec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cert_only = ProjectSecurity {
            tls_cert: Some(dir.join("c.pem")),
            ..Default::default()
        };
        assert!(conflict(cert_only.server()).contains("--project-tls-key"));
        let token_plain = ProjectSecurity {
            token: Some("t".into()),
            ..Default::default()
        };
        assert!(conflict(token_plain.server()).contains("in clear"));
        assert!(conflict(token_plain.client()).contains("--project-tls-ca"));
        let twice = ProjectSecurity {
            token: Some("t".into()),
            token_file: Some(dir.join("t")),
            ..Default::default()
        };
        assert!(conflict(twice.client()).contains("once"));

        let missing = ProjectSecurity {
            tls_ca: Some(dir.join("nonexistent-ca.pem")),
            ..Default::default()
        };
        let err = missing.client().unwrap_err();
        assert!(matches!(err, SecurityError::Read { .. }), "{err}");
        assert!(err.to_string().contains("nonexistent-ca.pem"), "{err}");

        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let bad = ProjectSecurity {
            tls_ca: Some(not_pem),
            ..Default::default()
        };
        assert!(matches!(
            bad.client().unwrap_err(),
            SecurityError::Invalid { .. }
        ));

        let empty = dir.join("empty-token");
        std::fs::write(&empty, "\n").unwrap();
        let empty_token = ProjectSecurity {
            token_file: Some(empty),
            ..Default::default()
        };
        assert!(matches!(
            empty_token.load_token().unwrap_err(),
            SecurityError::Token(_)
        ));
        let spaced = ProjectSecurity {
            token: Some("two words".into()),
            ..Default::default()
        };
        assert!(matches!(
            spaced.load_token().unwrap_err(),
            SecurityError::Token(_)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(ProjectSecurity::default().is_plain());
        assert!(
            ProjectSecurity::default()
                .device()
                .unwrap()
                .server
                .tls()
                .is_none()
        );
    }
}
