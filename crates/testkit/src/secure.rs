//! A secured bus for the lab, the benchmarks and the tests: a local CA, a
//! certificate for 127.0.0.1 (nats-server's, and the lab devices' project
//! service's), and one NATS user per role
//! (`understudy_bus::accounts`) with a random password.
//!
//! [`SecureBus::server_config`] is the nats-server configuration (TLS and
//! the accounts); [`SecureBus::env`] the `UNDERSTUDY_NATS_*` variables a
//! process of a role needs; [`SecureBus::connect`] a client of the test's
//! own, as a user with every permission (tests only; the lab has none).
//!
//! The end-to-end suite runs on a secured bus when `UNDERSTUDY_TEST_SECURE`
//! is set ([`from_env`]): every nats-server the toolkit starts gets the
//! configuration, every device the credentials of its group (and a project
//! service over TLS with the group token), the gateway its own, and
//! [`crate::connect`] logs in as the test's user.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use understudy_bus::accounts::{self, Password, Role, User};

use crate::Error;

/// The user the tests' own clients log in as: every permission (observers
/// that read every bucket, tests that write junk on purpose). Not in the
/// lab's configuration.
pub const TEST_USER: &str = "test-admin";

/// The files and users of a secured bus (see the module docs). `Debug`
/// shows the users, never their passwords.
#[derive(Clone)]
pub struct SecureBus {
    dir: PathBuf,
    users: Vec<(User, String)>,
    test_password: Option<String>,
}

impl std::fmt::Debug for SecureBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let users: Vec<&str> = self.users.iter().map(|(u, _)| u.name.as_str()).collect();
        f.debug_struct("SecureBus")
            .field("dir", &self.dir)
            .field("users", &users)
            .field("test_user", &self.test_password.is_some())
            .finish()
    }
}

impl SecureBus {
    /// Makes the CA, the server certificate and the users in `dir`: a
    /// device user for each of `groups`, `gateway` and `observer`, and the
    /// tests' [`TEST_USER`] when `with_test_user`.
    pub fn create(dir: &Path, groups: &[&str], with_test_user: bool) -> Result<SecureBus, Error> {
        Self::create_for(dir, groups, with_test_user, &[])
    }

    /// [`create`](Self::create) with more names (IP addresses or DNS
    /// names) in the server certificate besides `localhost` and 127.0.0.1:
    /// the containers of the compose lab (`understudy secure-init`).
    pub fn create_for(
        dir: &Path,
        groups: &[&str],
        with_test_user: bool,
        names: &[String],
    ) -> Result<SecureBus, Error> {
        std::fs::create_dir_all(dir).map_err(Error::io("create", dir))?;
        make_pki_for(dir, "", names)?;
        let mut roles = Vec::new();
        for g in groups {
            let group = g
                .parse()
                .map_err(|e| Error::Config(format!("group {g}: {e}")))?;
            roles.push(Role::Device(group));
        }
        roles.push(Role::Gateway);
        roles.push(Role::Observer);
        let users = roles
            .into_iter()
            .map(|role| {
                let secret = random_secret();
                let mut user = User::conventional(role);
                user.password = Password::Literal(secret.clone());
                (user, secret)
            })
            .collect();
        Ok(SecureBus {
            dir: dir.to_path_buf(),
            users,
            test_password: with_test_user.then(random_secret),
        })
    }

    /// The CA certificate (PEM) every client trusts.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The nats-server configuration: TLS with the server certificate, and
    /// the accounts (passwords written in: keep the file private).
    pub fn server_config(&self) -> String {
        let users: Vec<User> = self.users.iter().map(|(u, _)| u.clone()).collect();
        let mut text = format!(
            "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n  timeout: 2\n}}\n",
            self.dir.join("server.pem").display(),
            self.dir.join("server.key").display()
        );
        let mut config = accounts::accounts_config(&users);
        if let Some(pw) = &self.test_password {
            // The test's user has no permissions block: it may do anything.
            config = config.replacen(
                "    users: [\n",
                &format!("    users: [\n      {{ user: \"{TEST_USER}\", password: \"{pw}\" }}\n"),
                1,
            );
        }
        text.push_str(&config);
        text
    }

    /// The user name and password of `role`; `None` for a group this bus
    /// was not made for.
    pub fn credentials(&self, role: &Role) -> Option<(&str, &str)> {
        self.users
            .iter()
            .find(|(u, _)| &u.role == role)
            .map(|(u, pw)| (u.name.as_str(), pw.as_str()))
    }

    /// The `UNDERSTUDY_NATS_*` variables of a process of `role`: its user,
    /// password and the CA; only the CA for a group this bus was not made for.
    pub fn env(&self, role: &Role) -> Vec<(String, String)> {
        let mut env = vec![(
            "UNDERSTUDY_NATS_TLS_CA".to_string(),
            self.ca().display().to_string(),
        )];
        if let Some((user, pw)) = self.credentials(role) {
            env.push(("UNDERSTUDY_NATS_USER".to_string(), user.to_string()));
            env.push(("UNDERSTUDY_NATS_PASSWORD".to_string(), pw.to_string()));
        }
        env
    }

    /// The `UNDERSTUDY_PROJECT_*` variables of a device whose project
    /// service speaks TLS (the server certificate, for 127.0.0.1) and
    /// checks callers by the group token (in `project-token`).
    pub fn project_device_env(&self) -> Result<Vec<(String, String)>, Error> {
        let mut env = self.project_client_env()?;
        for (k, file) in [
            ("UNDERSTUDY_PROJECT_TLS_CERT", "server.pem"),
            ("UNDERSTUDY_PROJECT_TLS_KEY", "server.key"),
        ] {
            env.push((k.to_string(), self.dir.join(file).display().to_string()));
        }
        Ok(env)
    }

    /// The `UNDERSTUDY_PROJECT_*` variables of a client of the project
    /// service (`understudy project …`): the CA and the group token's file.
    pub fn project_client_env(&self) -> Result<Vec<(String, String)>, Error> {
        let token = self.project_token_file()?;
        Ok(vec![
            (
                "UNDERSTUDY_PROJECT_TLS_CA".to_string(),
                self.ca().display().to_string(),
            ),
            (
                "UNDERSTUDY_PROJECT_TOKEN_FILE".to_string(),
                token.display().to_string(),
            ),
        ])
    }

    /// The file holding the project service's group token (made on first
    /// use, owner-only).
    pub fn project_token_file(&self) -> Result<PathBuf, Error> {
        let token = self.dir.join("project-token");
        if !token.exists() {
            write_private(&token, &format!("{}\n", random_secret()))?;
        }
        Ok(token)
    }

    /// The connection settings of a process of `role` on `servers`: its
    /// user and password, and the CA.
    pub fn settings(&self, role: &Role, servers: &str) -> understudy_bus::NatsSettings {
        let mut settings = understudy_bus::NatsSettings::plain(servers);
        if let Some((user, pw)) = self.credentials(role) {
            settings.user = Some(user.to_string());
            settings.password = Some(pw.to_string());
        }
        settings.tls_ca = Some(self.ca());
        settings
    }

    /// A client as [`TEST_USER`] (or, without one, as the observer), over
    /// TLS, with [`crate::connect`]'s timings.
    pub async fn connect(
        &self,
        urls: &str,
    ) -> Result<async_nats::Client, async_nats::ConnectError> {
        let (user, pw) = match &self.test_password {
            Some(pw) => (TEST_USER.to_string(), pw.clone()),
            None => {
                let (u, p) = self.credentials(&Role::Observer).unwrap_or(("", ""));
                (u.to_string(), p.to_string())
            }
        };
        let options = async_nats::ConnectOptions::with_user_and_password(user, pw)
            .add_root_certificates(self.ca())
            .require_tls(true);
        crate::nats::connect_with(options, urls).await
    }
}

/// Writes `text` to `path`, readable and writable by its owner only
/// (configuration that holds passwords, private keys).
pub fn write_private(path: &Path, text: &str) -> Result<(), Error> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io("write", path))?;
    file.write_all(text.as_bytes())
        .map_err(Error::io("write", path))
}

/// 32 random hex digits.
fn random_secret() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// A CA and one certificate it signed, for 127.0.0.1 and `localhost`
/// (usable as a server's and as a client's), as PEM files.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA's certificate.
    pub ca: PathBuf,
    /// The CA's certificate, DER-encoded (for a rustls root store).
    pub ca_der: Vec<u8>,
    /// The certificate.
    pub cert: PathBuf,
    /// Its private key (owner-only).
    pub key: PathBuf,
}

/// Makes a [`Pki`] in `dir`: `<tag>ca.pem`, `<tag>server.pem` and
/// `<tag>server.key` (`tag` may be empty). Every file is owner-only.
pub fn make_pki(dir: &Path, tag: &str) -> Result<Pki, Error> {
    make_pki_for(dir, tag, &[])
}

/// [`make_pki`] with more names in the certificate besides `localhost` and
/// 127.0.0.1: each of `names` is an IP address or a DNS name (containers'
/// names and addresses, `understudy secure-init --san`).
pub fn make_pki_for(dir: &Path, tag: &str, names: &[String]) -> Result<Pki, Error> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
    let bad = |e: rcgen::Error| Error::Config(format!("cannot make a certificate: {e}"));
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(bad)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("understudy local CA {tag}"));
    let ca_key = KeyPair::generate().map_err(bad)?;
    let ca = ca_params.self_signed(&ca_key).map_err(bad)?;
    let issuer = Issuer::new(ca_params, ca_key);
    let mut params = CertificateParams::new(vec!["localhost".to_string()]).map_err(bad)?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(std::net::IpAddr::from([127, 0, 0, 1])));
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(
                name.clone()
                    .try_into()
                    .map_err(|e| Error::Config(format!("{name:?} is not a DNS name: {e}")))?,
            ),
        };
        params.subject_alt_names.push(san);
    }
    let key = KeyPair::generate().map_err(bad)?;
    let cert = params.signed_by(&key, &issuer).map_err(bad)?;
    let pki = Pki {
        ca: dir.join(format!("{tag}ca.pem")),
        ca_der: ca.der().to_vec(),
        cert: dir.join(format!("{tag}server.pem")),
        key: dir.join(format!("{tag}server.key")),
    };
    write_private(&pki.ca, &ca.pem())?;
    write_private(&pki.cert, &cert.pem())?;
    write_private(&pki.key, &key.serialize_pem())?;
    Ok(pki)
}

/// The secured bus of this test process when `UNDERSTUDY_TEST_SECURE` is
/// set (`1`: for the group `stage`; else a comma-separated list of groups),
/// made once in a folder under the system's temp dir; `None` otherwise.
/// Panics if it cannot be made (a test run that asked for it cannot go on
/// without it).
pub fn from_env() -> Option<&'static SecureBus> {
    static BUS: OnceLock<Option<SecureBus>> = OnceLock::new();
    BUS.get_or_init(|| {
        let value = std::env::var("UNDERSTUDY_TEST_SECURE").ok()?;
        if value.is_empty() || value == "0" {
            return None;
        }
        let groups: Vec<&str> = if value == "1" {
            vec!["stage"]
        } else {
            value.split(',').map(str::trim).collect()
        };
        let dir = std::env::temp_dir().join(format!(
            "understudy-secure-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        ));
        Some(
            SecureBus::create(&dir, &groups, true)
                .unwrap_or_else(|e| panic!("UNDERSTUDY_TEST_SECURE: {e}")),
        )
    })
    .as_ref()
}
