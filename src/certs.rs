//! Development certificates: a private CA, a server certificate and client
//! certificates whose common name is the client's identity (what `whoami()`
//! returns on a TLS server). Python rpyc leaves this to `openssl` recipes;
//! `rpyc certs init` / `rpyc certs client NAME` wrap this module.
//!
//! **Development only.** The CA key sits next to the certificates it signs,
//! certificates live for years and nothing can be revoked. Production
//! deployments take certificates from their own PKI.
//!
//! Keys are ECDSA P-256, generated with *ring* through rcgen. The
//! certificates satisfy strict X.509 checkers (Python 3.13's
//! `VERIFY_X509_STRICT`): the CA has critical basic constraints and key
//! usages, every leaf names its issuer's key (authority key identifier) and
//! carries the extended key usage it is for.
//!
//! On disk ([`init_dir`], [`client_cert`]) private keys are written with
//! permission 0600; certificates are world-readable PEM.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// How long the development CA is valid, in days.
pub const CA_VALIDITY_DAYS: i64 = 3650;
/// How long server and client certificates are valid, in days.
pub const LEAF_VALIDITY_DAYS: i64 = 825;

/// The names every development server certificate carries.
pub const DEFAULT_SANS: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// What went wrong making or storing certificates.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused the parameters or failed to sign.
    #[error("cannot generate certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file that would be overwritten already exists.
    #[error("{0} already exists (delete it, or pass --force to overwrite)")]
    Exists(PathBuf),
    /// The directory has no CA to sign with.
    #[error("no development CA in {0}: create one with `rpyc certs init --dir {0}`")]
    NoCa(String),
    /// A CA certificate or key that cannot be used.
    #[error("{path}: {reason}")]
    BadCa {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A name that cannot be a certificate name or file name.
    #[error("invalid name {name:?}: {reason}")]
    BadName {
        /// The name.
        name: String,
        /// Why.
        reason: &'static str,
    },
}

/// A certificate and its private key, PEM-encoded. `Debug` hides the key.
#[derive(Clone, PartialEq, Eq)]
pub struct CertKeyPem {
    /// The certificate (`-----BEGIN CERTIFICATE-----`).
    pub cert_pem: String,
    /// The PKCS#8 private key (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

impl fmt::Debug for CertKeyPem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertKeyPem").field("cert_pem", &self.cert_pem).field("key_pem", &"<redacted>").finish()
    }
}

/// A development CA that signs server and client certificates.
pub struct DevCa {
    pem: CertKeyPem,
    issuer: Issuer<'static, KeyPair>,
}

impl fmt::Debug for DevCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCa").field("pem", &self.pem).finish_non_exhaustive()
    }
}

impl DevCa {
    /// A new CA with a fresh key. Its common name carries a short tag of its
    /// key, so certificates from two `init` runs tell each other apart in
    /// error messages.
    pub fn generate() -> Result<DevCa, CertError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        let tag = params.key_identifier(&key);
        let tag: String = tag.iter().take(4).map(|b| format!("{b:02x}")).collect();
        params.distinguished_name.push(DnType::CommonName, format!("rpyc development CA {tag}"));
        params.distinguished_name.push(DnType::OrganizationName, DEV_ORG);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        set_validity(&mut params, -1, CA_VALIDITY_DAYS);
        let cert = params.self_signed(&key)?;
        let pem = CertKeyPem { cert_pem: cert.pem(), key_pem: key.serialize_pem() };
        Ok(DevCa { pem, issuer: Issuer::new(params, key) })
    }

    /// Loads a CA from its PEM certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<DevCa, CertError> {
        let key = KeyPair::from_pem(key_pem)?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)?;
        let pem = CertKeyPem { cert_pem: cert_pem.to_string(), key_pem: key_pem.to_string() };
        Ok(DevCa { pem, issuer })
    }

    /// Loads `ca.pem` and `ca.key` from a directory.
    pub fn load(dir: &Path) -> Result<DevCa, CertError> {
        let (cert, key) = (dir.join(CA_CERT), dir.join(CA_KEY));
        if !cert.exists() || !key.exists() {
            return Err(CertError::NoCa(dir.display().to_string()));
        }
        let cert_pem = read(&cert)?;
        let key_pem = read(&key)?;
        let key_pair = KeyPair::from_pem(&key_pem)
            .map_err(|e| CertError::BadCa { path: key.clone(), reason: format!("not a usable private key: {e}") })?;
        let issuer = Issuer::from_ca_cert_pem(&cert_pem, key_pair)
            .map_err(|e| CertError::BadCa { path: cert, reason: format!("not a usable CA certificate: {e}") })?;
        Ok(DevCa { pem: CertKeyPem { cert_pem, key_pem }, issuer })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> &CertKeyPem {
        &self.pem
    }

    /// The CA certificate (what clients and servers trust).
    pub fn cert_pem(&self) -> &str {
        &self.pem.cert_pem
    }

    /// A server certificate for `localhost`, `127.0.0.1`, `::1` and
    /// `extra_sans` (DNS names or IP addresses).
    pub fn server_cert(&self, extra_sans: &[String]) -> Result<CertKeyPem, CertError> {
        let mut sans: Vec<String> = DEFAULT_SANS.iter().map(|s| s.to_string()).collect();
        for s in extra_sans {
            if !sans.contains(s) {
                sans.push(s.clone());
            }
        }
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name.push(DnType::CommonName, "rpyc development server");
        params.distinguished_name.push(DnType::OrganizationName, DEV_ORG);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        set_validity(&mut params, -1, LEAF_VALIDITY_DAYS);
        self.sign(params)
    }

    /// A client certificate whose common name is `name` (the identity a
    /// TLS server sees).
    pub fn client_cert(&self, name: &str) -> Result<CertKeyPem, CertError> {
        self.client_cert_valid(name, -1, LEAF_VALIDITY_DAYS)
    }

    /// A client certificate that expired yesterday, for testing that
    /// servers refuse it.
    pub fn expired_client_cert(&self, name: &str) -> Result<CertKeyPem, CertError> {
        self.client_cert_valid(name, -30, -1)
    }

    fn client_cert_valid(&self, name: &str, from: i64, to: i64) -> Result<CertKeyPem, CertError> {
        check_name(name)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.distinguished_name.push(DnType::OrganizationName, DEV_ORG);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        set_validity(&mut params, from, to);
        self.sign(params)
    }

    fn sign(&self, mut params: CertificateParams) -> Result<CertKeyPem, CertError> {
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(CertKeyPem { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
    }
}

/// A CA with a server certificate and one client certificate, in memory
/// (for tests and examples).
#[derive(Debug)]
pub struct DevPki {
    /// The CA.
    pub ca: DevCa,
    /// The server certificate (see [`DevCa::server_cert`]).
    pub server: CertKeyPem,
    /// A client certificate with common name `client`.
    pub client: CertKeyPem,
}

/// Generates a CA, a server certificate (with `extra_sans`) and a client
/// certificate named `client`, in memory.
pub fn generate(extra_sans: &[String]) -> Result<DevPki, CertError> {
    let ca = DevCa::generate()?;
    let server = ca.server_cert(extra_sans)?;
    let client = ca.client_cert(DEFAULT_CLIENT)?;
    Ok(DevPki { ca, server, client })
}

/// The CA certificate file name.
pub const CA_CERT: &str = "ca.pem";
/// The CA key file name.
pub const CA_KEY: &str = "ca.key";
/// The name of the client certificate [`init_dir`] creates.
pub const DEFAULT_CLIENT: &str = "client";

const DEV_ORG: &str = "rpyc development certificates - NOT FOR PRODUCTION";

/// The files [`init_dir`] writes, in order.
pub const INIT_FILES: [&str; 6] = ["ca.pem", "ca.key", "server.pem", "server.key", "client.pem", "client.key"];

/// Creates a development CA, a server certificate and a client certificate
/// (common name `client`) in `dir`: exactly the files in [`INIT_FILES`].
/// Creates `dir` if needed (mode 0700 on Unix, whatever the umask);
/// refuses to overwrite any of the files. Certificates are written 0644 and
/// keys 0600, also whatever the umask.
pub fn init_dir(dir: &Path, extra_sans: &[String]) -> Result<Vec<PathBuf>, CertError> {
    create_private_dir(dir)?;
    for f in INIT_FILES {
        let p = dir.join(f);
        if p.exists() {
            return Err(CertError::Exists(p));
        }
    }
    let pki = generate(extra_sans)?;
    let files = [
        (CA_CERT, &pki.ca.pem.cert_pem, false),
        (CA_KEY, &pki.ca.pem.key_pem, true),
        ("server.pem", &pki.server.cert_pem, false),
        ("server.key", &pki.server.key_pem, true),
        ("client.pem", &pki.client.cert_pem, false),
        ("client.key", &pki.client.key_pem, true),
    ];
    let mut written = Vec::new();
    for (name, contents, private) in files {
        let p = dir.join(name);
        write_file(&p, contents, private)?;
        written.push(p);
    }
    Ok(written)
}

/// Signs a client certificate for `name` with the CA in `dir`, written as
/// `<name>.pem` and `<name>.key`; refuses to overwrite them. Returns the
/// two paths.
pub fn client_cert(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertError> {
    let (cert, key) = client_paths(dir, name)?;
    let ca = DevCa::load(dir)?;
    for p in [&cert, &key] {
        if p.exists() {
            return Err(CertError::Exists(p.clone()));
        }
    }
    let issued = ca.client_cert(name)?;
    write_file(&cert, &issued.cert_pem, false)?;
    write_file(&key, &issued.key_pem, true)?;
    Ok((cert, key))
}

/// Reissues the server certificate and key in `dir` (`server.pem`,
/// `server.key`) with the CA there, valid for localhost, 127.0.0.1, ::1
/// and `extra_sans`. The CA and every client certificate stay valid; the
/// old server files are replaced (written to temporary files first, so a
/// failure leaves them as they were). Returns the two paths.
pub fn server_cert(dir: &Path, extra_sans: &[String]) -> Result<(PathBuf, PathBuf), CertError> {
    let ca = DevCa::load(dir)?;
    let issued = ca.server_cert(extra_sans)?;
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    let (tmp_cert, tmp_key) = (dir.join(".server.pem.new"), dir.join(".server.key.new"));
    for p in [&tmp_cert, &tmp_key] {
        let _ = std::fs::remove_file(p);
    }
    write_file(&tmp_key, &issued.key_pem, true)?;
    write_file(&tmp_cert, &issued.cert_pem, false)?;
    // Key first: a server reloading in between sees the new key with the
    // old certificate and refuses the pair, keeping what it has.
    std::fs::rename(&tmp_key, &key).map_err(|e| io_err(&key, e))?;
    std::fs::rename(&tmp_cert, &cert).map_err(|e| io_err(&cert, e))?;
    Ok((cert, key))
}

/// Where [`client_cert`] writes the certificate and key for `name`; fails
/// for names that are not safe file names.
pub fn client_paths(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), CertError> {
    check_name(name)?;
    Ok((dir.join(format!("{name}.pem")), dir.join(format!("{name}.key"))))
}

/// Creates `dir` (and missing parents) if it does not exist; a directory
/// this call creates gets mode 0700 on Unix whatever the umask, since it
/// holds private keys. An existing directory is left as it is.
fn create_private_dir(dir: &Path) -> Result<(), CertError> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|e| io_err(dir, e))?;
    #[cfg(unix)]
    {
        // The umask only clears bits, but be explicit: exactly 0700.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| io_err(dir, e))?;
    }
    Ok(())
}

/// Writes a file with an explicit mode on Unix, whatever the umask and also
/// when it already existed with another one: 0600 for `private` files (keys),
/// 0644 for the others (certificates).
pub fn write_file(path: &Path, contents: &str, private: bool) -> Result<(), CertError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    let mode = if private { 0o600 } else { 0o644 };
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    let mut f = opts.open(path).map_err(|e| io_err(path, e))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode)).map_err(|e| io_err(path, e))?;
    }
    f.write_all(contents.as_bytes()).map_err(|e| io_err(path, e))
}

fn read(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|e| io_err(path, e))
}

fn io_err(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io { path: path.to_path_buf(), source }
}

/// A client name doubles as a file name: keep it to a safe alphabet and
/// away from the CA's and the server's own files.
fn check_name(name: &str) -> Result<(), CertError> {
    let bad = |reason| Err(CertError::BadName { name: name.to_string(), reason });
    if name.is_empty() || name.len() > 64 {
        return bad("must be 1 to 64 characters");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@')) {
        return bad("use letters, digits, '-', '_', '.' and '@' only");
    }
    if name.starts_with('.') || name.starts_with('-') {
        return bad("must not start with '.' or '-'");
    }
    if name == "ca" || name == "server" {
        return bad("'ca' and 'server' are taken by the CA and server files");
    }
    Ok(())
}

/// Sets `not_before` / `not_after` from day offsets relative to today (UTC).
fn set_validity(params: &mut CertificateParams, from_days: i64, to_days: i64) {
    let today = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| (d.as_secs() / 86_400) as i64)
        .unwrap_or(0);
    let (y, m, d) = civil_from_days(today + from_days);
    params.not_before = rcgen::date_time_ymd(y, m, d);
    let (y, m, d) = civil_from_days(today + to_days);
    params.not_after = rcgen::date_time_ymd(y, m, d);
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`), always a valid date.
fn civil_from_days(days: i64) -> (i32, u8, u8) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
    let year = (yoe + era * 400 + i64::from(month <= 2)) as i32;
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_782), (2024, 2, 29));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name("alice").is_ok());
        assert!(check_name("bob@example.org").is_ok());
        for bad in ["", "ca", "server", "../x", "a/b", ".hidden", "-x", "a b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn in_memory_pki_round_trips() {
        let pki = generate(&["rpyc.example".into()]).unwrap();
        let ca = DevCa::from_pem(&pki.ca.pem().cert_pem, &pki.ca.pem().key_pem).unwrap();
        let alice = ca.client_cert("alice").unwrap();
        let info = crate::transport::tls::certificate_info(&pem_der(&alice.cert_pem));
        assert_eq!(info.common_name.as_deref(), Some("alice"));
        let server = crate::transport::tls::certificate_info(&pem_der(&pki.server.cert_pem));
        for n in ["localhost", "127.0.0.1", "::1", "rpyc.example"] {
            assert!(server.subject_alt_names.iter().any(|s| s == n), "{n}: {server:?}");
        }
        assert!(!format!("{alice:?}").contains("PRIVATE KEY"));
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn init_dir_writes_private_keys_0600() {
        let dir = tempfile::tempdir().unwrap();
        let files = init_dir(dir.path(), &[]).unwrap();
        assert_eq!(files.len(), INIT_FILES.len());
        assert!(matches!(init_dir(dir.path(), &[]), Err(CertError::Exists(_))));
        let (cert, key) = client_cert(dir.path(), "alice").unwrap();
        assert!(cert.ends_with("alice.pem") && key.ends_with("alice.key"));
        #[cfg(unix)]
        for f in ["ca.key", "server.key", "client.key", "alice.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(f)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{f}");
        }
        assert!(matches!(client_cert(dir.path(), "alice"), Err(CertError::Exists(_))));
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(client_cert(empty.path(), "bob"), Err(CertError::NoCa(_))));
    }
}
