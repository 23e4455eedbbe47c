//! The state directory (`[acme] state_dir`): what is kept across restarts and shared by
//! a fleet on one volume.
//!
//! - `account.json`: the ACME account (its key and URL) and the directory it belongs to;
//! - `certificate.pem`: the certificate chain followed by its private key, in one file
//!   so that it is replaced in one rename and a reader never sees a new certificate
//!   with an old key;
//! - `lock`: held (`flock`) by the one instance that is ordering.
//!
//! Files are written to a temporary name with mode 0600 and renamed into place.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use thiserror::Error;

const ACCOUNT: &str = "account.json";
const CERTIFICATE: &str = "certificate.pem";
const LOCK: &str = "lock";

/// Why a stored certificate cannot be served.
#[derive(Debug, Error)]
pub(crate) enum BundleError {
    #[error("not PEM: {0}")]
    Pem(rustls::pki_types::pem::Error),
    #[error("no certificate in it")]
    NoCertificate,
    #[error("no private key in it")]
    NoKey,
    #[error("the certificate cannot be read: {0}")]
    X509(String),
    #[error("the private key does not fit the certificate: {0}")]
    Key(rustls::Error),
}

/// A certificate ready to serve, with what is worth knowing about it.
#[derive(Debug)]
pub(crate) struct Issued {
    pub(crate) key: Arc<CertifiedKey>,
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// The serial number, in hex: tells one certificate from its renewal.
    pub(crate) serial: String,
    /// The DNS names it is valid for.
    pub(crate) names: Vec<String>,
}

impl Issued {
    /// Reads a bundle: the chain (leaf first), then the private key, all PEM.
    pub(crate) fn from_pem(pem: &[u8]) -> Result<Self, BundleError> {
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(BundleError::Pem)?;
        let leaf = chain.first().ok_or(BundleError::NoCertificate)?;
        let key = PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
            rustls::pki_types::pem::Error::NoItemsFound => BundleError::NoKey,
            e => BundleError::Pem(e),
        })?;
        let (not_before, not_after, serial, names) = {
            let (_, cert) = x509_parser::parse_x509_certificate(leaf).map_err(|e| BundleError::X509(e.to_string()))?;
            let time = |t: x509_parser::time::ASN1Time| {
                let secs = t.timestamp();
                match u64::try_from(secs) {
                    Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
                    Err(_) => SystemTime::UNIX_EPOCH,
                }
            };
            let validity = cert.validity();
            let names = match cert.subject_alternative_name() {
                Ok(Some(san)) => san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (time(validity.not_before), time(validity.not_after), cert.raw_serial_as_string().replace(':', ""), names)
        };
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(BundleError::Key)?;
        Ok(Issued { key: Arc::new(key), not_before, not_after, serial, names })
    }

    /// Whether it names every one of `domains`.
    pub(crate) fn covers(&self, domains: &[String]) -> bool {
        domains.iter().all(|d| self.names.contains(d))
    }

    pub(crate) fn expired(&self, now: SystemTime) -> bool {
        now >= self.not_after
    }
}

/// The state directory of one config.
#[derive(Debug, Clone)]
pub(crate) struct StateDir {
    dir: PathBuf,
}

impl StateDir {
    pub(crate) fn new(dir: &Path) -> Self {
        Self { dir: dir.to_path_buf() }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.dir
    }

    /// Creates the directory (mode 0700) if it is not there.
    pub(crate) fn create(&self) -> io::Result<()> {
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&self.dir)
    }

    pub(crate) fn certificate_path(&self) -> PathBuf {
        self.dir.join(CERTIFICATE)
    }

    /// The stored bundle's bytes; `None` when there is none yet.
    pub(crate) fn read_certificate(&self) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.certificate_path())
    }

    pub(crate) fn write_certificate(&self, pem: &[u8]) -> io::Result<()> {
        write_private(&self.dir, CERTIFICATE, pem)
    }

    pub(crate) fn read_account(&self) -> io::Result<Option<Vec<u8>>> {
        read_optional(&self.dir.join(ACCOUNT))
    }

    pub(crate) fn write_account(&self, json: &[u8]) -> io::Result<()> {
        write_private(&self.dir, ACCOUNT, json)
    }

    /// The ordering lock, if no other process holds it now.
    pub(crate) fn try_lock(&self) -> io::Result<Option<OrderLock>> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).mode(0o600).open(self.dir.join(LOCK))?;
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r == 0 {
            return Ok(Some(OrderLock { _file: file }));
        }
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::WouldBlock { Ok(None) } else { Err(e) }
    }
}

/// Held while this process orders; released when dropped (the descriptor closes).
#[derive(Debug)]
pub(crate) struct OrderLock {
    _file: File,
}

fn read_optional(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes `name` in `dir` whole or not at all, readable by the owner only.
fn write_private(dir: &Path, name: &str, bytes: &[u8]) -> io::Result<()> {
    let temp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&temp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temp, dir.join(name))
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn bundle(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn a_bundle_is_read_with_its_dates_serial_and_names() {
        let (cert, key) = bundle(&["mx.example.com", "MX2.example.com"]);
        let issued = Issued::from_pem(format!("{cert}{key}").as_bytes()).unwrap();
        assert_eq!(issued.names, ["mx.example.com", "mx2.example.com"]);
        assert!(issued.covers(&["mx2.example.com".into()]));
        assert!(!issued.covers(&["other.example.com".into()]));
        assert!(issued.not_after > issued.not_before);
        assert!(!issued.serial.is_empty() && issued.serial.chars().all(|c| c.is_ascii_hexdigit()));
        assert!(!issued.expired(SystemTime::now()));
        assert!(issued.expired(issued.not_after));
    }

    #[test]
    fn broken_bundles_say_what_is_wrong() {
        let (cert, key) = bundle(&["mx.example.com"]);
        let (_, other_key) = bundle(&["mx.example.com"]);
        assert!(matches!(Issued::from_pem(cert.as_bytes()), Err(BundleError::NoKey)));
        assert!(matches!(Issued::from_pem(key.as_bytes()), Err(BundleError::NoCertificate)));
        assert!(matches!(Issued::from_pem(format!("{cert}{other_key}").as_bytes()), Err(BundleError::Key(_))));
        assert!(Issued::from_pem(b"not pem at all").is_err());
    }

    #[test]
    fn files_are_private_and_replaced_whole() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(&dir.path().join("acme"));
        state.create().unwrap();
        assert_eq!(std::fs::metadata(state.path()).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(state.read_certificate().unwrap().is_none());
        state.write_certificate(b"one").unwrap();
        state.write_certificate(b"two").unwrap();
        state.write_account(b"{}").unwrap();
        assert_eq!(state.read_certificate().unwrap().unwrap(), b"two");
        for name in [CERTIFICATE, ACCOUNT] {
            let mode = std::fs::metadata(state.path().join(name)).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{name}");
        }
        // No temporary file is left behind.
        let names: Vec<String> =
            std::fs::read_dir(state.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().all(|n| !n.ends_with(".tmp")), "{names:?}");
    }

    #[test]
    fn one_lock_holder_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let state = StateDir::new(dir.path());
        let held = state.try_lock().unwrap();
        assert!(held.is_some());
        // flock locks belong to the open file: a second open, as another process
        // would make, is refused while the first is held.
        assert!(state.try_lock().unwrap().is_none());
        drop(held);
        assert!(state.try_lock().unwrap().is_some());
    }
}
