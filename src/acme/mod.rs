//! Automatic certificates (`[acme]`, RFC 8555): obtained from an ACME CA, kept in the
//! state directory, renewed before they expire, and served by the next TLS handshake
//! without a restart.
//!
//! # Layout
//! - this file: [`Certificates`], the running side: the certificate served now (through
//!   a rustls certificate resolver, so a renewal reaches the next handshake while open
//!   sessions keep theirs) and the challenge answers of an order in progress;
//!   [`accept`], the server-side handshake that answers TLS-ALPN-01 validations; and
//!   [`run`], the task that loads, orders, renews and retries.
//! - [`schedule`]: when to renew and how long to back off (pure).
//! - [`stored`]: the state directory: account, certificate bundle, the fleet's lock.
//! - [`order`]: one issuance with `instant-acme`.
//! - [`http01`]: the HTTP listener that answers `/.well-known/acme-challenge/`.
//!
//! # A fleet on one state directory
//! Instances sharing `state_dir` (a volume) take an exclusive `flock` on `state_dir/lock`
//! before ordering; the one that holds it orders and writes the bundle, the others
//! find the lock held and read the directory again every [`FLEET_POLL`] until a
//! certificate that is not due appears. Every instance also reads the directory at
//! each wake-up, so a certificate renewed by another is served within [`PICKUP`]. A file
//! lock needs nothing but the volume (no Redis), and is released by the kernel if the
//! holder dies; it needs a file system with working `flock` (local, or NFSv4).

pub(crate) mod http01;
pub(crate) mod order;
pub(crate) mod schedule;
pub(crate) mod stored;

use crate::config::acme::AcmeConfig;
use crate::metrics;
use arc_swap::ArcSwapOption;
use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};
use stored::{Issued, StateDir};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// The ALPN protocol of TLS-ALPN-01 validations (RFC 8737).
pub(crate) const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";
/// While another instance holds the lock: how often the state directory is read.
pub(crate) const FLEET_POLL: Duration = Duration::from_secs(5);
/// At most this long between two reads of the state directory.
pub(crate) const PICKUP: Duration = Duration::from_secs(60);
/// One whole issuance, at most: a CA that stops answering mid-order is given up on.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(300);

/// The certificates of `[acme]` as they stand: the one served, and the answers to
/// the challenges of an order in progress. Shared by the workers (handshakes), the
/// HTTP-01 listener and the ACME task.
pub(crate) struct Certificates {
    /// The metric label: the certificate's first name.
    name: String,
    served: Arc<Served>,
    serving: Arc<ServerConfig>,
    tls_alpn: Arc<AlpnAnswers>,
    tls_alpn_config: Arc<ServerConfig>,
    /// HTTP-01: token -> key authorization.
    http: Mutex<HashMap<String, String>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("name", &self.name).field("current", &self.current()).finish()
    }
}

impl Certificates {
    pub(crate) fn new(config: &AcmeConfig) -> Arc<Self> {
        let served = Arc::new(Served(ArcSwapOption::empty()));
        let serving = ServerConfig::builder().with_no_client_auth().with_cert_resolver(served.clone());
        let tls_alpn = Arc::new(AlpnAnswers(Mutex::new(HashMap::new())));
        let mut tls_alpn_config = ServerConfig::builder().with_no_client_auth().with_cert_resolver(tls_alpn.clone());
        tls_alpn_config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        Arc::new(Self {
            name: config.domains.first().cloned().unwrap_or_default(),
            served,
            serving: Arc::new(serving),
            tls_alpn,
            tls_alpn_config: Arc::new(tls_alpn_config),
            http: Mutex::new(HashMap::new()),
        })
    }

    /// The certificate served now, if any.
    pub(crate) fn current(&self) -> Option<Arc<Issued>> {
        self.served.0.load_full()
    }

    /// When the certificate served now expires (for the status page).
    pub(crate) fn expiry(&self) -> Option<SystemTime> {
        self.current().map(|c| c.not_after)
    }

    /// Whether a handshake would get a certificate now (one that has not expired).
    pub(crate) fn ready(&self) -> bool {
        self.current().is_some_and(|c| !c.expired(SystemTime::now()))
    }

    /// Serves `issued` from the next handshake on; sessions already in TLS keep theirs.
    pub(crate) fn install(&self, issued: Issued) {
        metrics::tls_certificate_expiry(&self.name, unix_seconds(issued.not_after));
        self.served.0.store(Some(Arc::new(issued)));
    }

    /// The server config that serves the current certificate; `None` until there is one.
    pub(crate) fn server_config(&self) -> Option<Arc<ServerConfig>> {
        self.ready().then(|| self.serving.clone())
    }

    /// Loads the stored bundle if there is one that can be served; says why not.
    pub(crate) fn load_stored(&self, state: &StateDir) -> Result<Option<Arc<Issued>>, String> {
        let path = state.certificate_path();
        let Some(pem) = state.read_certificate().map_err(|e| format!("{}: {e}", path.display()))? else {
            return Ok(None);
        };
        let issued = Issued::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))?;
        if issued.expired(SystemTime::now()) {
            return Err(format!(
                "{}: expired at {}",
                path.display(),
                humantime::format_rfc3339_seconds(issued.not_after)
            ));
        }
        let new = self.current().is_none_or(|c| c.serial != issued.serial);
        if new {
            self.install(issued);
        }
        Ok(self.current().filter(|_| new))
    }

    /// HTTP-01: answer `token` with `key_authorization` until the order is over.
    pub(crate) fn answer_http(&self, token: &str, key_authorization: &str) {
        lock(&self.http).insert(token.to_string(), key_authorization.to_string());
    }

    /// The answer for an HTTP-01 `token`, while its order is in progress.
    pub(crate) fn http_answer(&self, token: &str) -> Option<String> {
        lock(&self.http).get(token).cloned()
    }

    /// TLS-ALPN-01: a self-signed certificate for `name` carrying the digest of the key
    /// authorization in the critical acmeIdentifier extension (RFC 8737 3).
    pub(crate) fn answer_tls_alpn(&self, name: &str, digest: &[u8]) -> Result<(), order::OrderError> {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).map_err(order::OrderError::Csr)?;
        params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
        let key = rcgen::KeyPair::generate().map_err(order::OrderError::Csr)?;
        let cert = params.self_signed(&key).map_err(order::OrderError::Csr)?;
        let der = rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into());
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        // Not `from_der`: its key check parses the certificate, and webpki refuses the
        // critical acmeIdentifier extension (only the CA's validator needs to read it).
        let signing = provider.key_provider.load_private_key(der).map_err(order::OrderError::ChallengeKey)?;
        let certified = CertifiedKey::new(vec![cert.der().clone()], signing);
        lock(&self.tls_alpn.0).insert(name.to_ascii_lowercase(), Arc::new(certified));
        Ok(())
    }

    /// Takes every challenge answer down.
    pub(crate) fn clear_answers(&self) {
        lock(&self.http).clear();
        lock(&self.tls_alpn.0).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// The resolver of the serving config: whatever certificate is current, if not expired.
#[derive(Debug)]
struct Served(ArcSwapOption<Issued>);

impl ResolvesServerCert for Served {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.load().as_ref().filter(|c| !c.expired(SystemTime::now())).map(|c| c.key.clone())
    }
}

/// The resolver of TLS-ALPN-01 handshakes: the challenge certificate for the name asked.
#[derive(Debug)]
struct AlpnAnswers(Mutex<HashMap<String, Arc<CertifiedKey>>>);

impl ResolvesServerCert for AlpnAnswers {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let name = hello.server_name()?.to_ascii_lowercase();
        lock(&self.0).get(&name).cloned()
    }
}

// === the handshake ===

/// What a client's TLS handshake came to.
pub(crate) enum Accepted<IO> {
    /// A TLS session to serve.
    Tls(Box<tokio_rustls::server::TlsStream<IO>>),
    /// A TLS-ALPN-01 validation, answered and closed (RFC 8737: no data follows).
    Challenge(String),
}

/// The server side of a handshake. Without [`Certificates`], the `[tls]` files'
/// config; with them, the ClientHello is read first: a validation (ALPN `acme-tls/1`)
/// gets the challenge certificate, anything else the current certificate, or the
/// `[tls]` files' until there is one. With neither, the handshake fails with an alert.
pub(crate) async fn accept<IO>(
    certs: Option<&Certificates>,
    files: Option<Arc<ServerConfig>>,
    io: IO,
) -> std::io::Result<Accepted<IO>>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let Some(certs) = certs else {
        let config = files.ok_or_else(|| std::io::Error::other("no server certificate"))?;
        return Ok(Accepted::Tls(Box::new(tokio_rustls::TlsAcceptor::from(config).accept(io).await?)));
    };
    let start = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io).await?;
    let hello = start.client_hello();
    if hello.alpn().is_some_and(|mut protocols| protocols.any(|p| p == ACME_TLS_ALPN)) {
        let name = hello.server_name().unwrap_or_default().to_string();
        let mut stream = start.into_stream(certs.tls_alpn_config.clone()).await?;
        let _ = stream.shutdown().await;
        return Ok(Accepted::Challenge(name));
    }
    let config = match (certs.server_config(), files) {
        (Some(acme), _) => acme,
        (None, Some(files)) => files,
        // Fails in the handshake with an alert: there is no certificate to send.
        (None, None) => certs.serving.clone(),
    };
    Ok(Accepted::Tls(Box::new(start.into_stream(config).await?)))
}

// === the task ===

/// Starts [`run`] on a thread of its own: reading and writing `state_dir` blocks (a
/// shared volume can hang), and must never stall the control thread that serves the
/// admin endpoint, the health checks and the HTTP-01 answers.
pub(crate) fn start(config: AcmeConfig, certs: Arc<Certificates>, shutdown: CancellationToken) {
    let started = std::thread::Builder::new().name("portcullis-acme".into()).spawn(move || {
        match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(rt) => rt.block_on(run(config, certs, shutdown)),
            Err(e) => tracing::error!(error = %e, "ACME: cannot start its runtime; no certificate will be ordered"),
        }
    });
    if let Err(e) = started {
        tracing::error!(error = %e, "ACME: cannot start its thread; no certificate will be ordered");
    }
}

/// Keeps `certs` current until `shutdown`: serves what the state directory holds,
/// orders when nothing servable is there or renewal is due, retries with backoff.
/// Never returns early and never panics on the CA's account: every failure is logged
/// and retried.
async fn run(config: AcmeConfig, certs: Arc<Certificates>, shutdown: CancellationToken) {
    let state = StateDir::new(&config.state_dir);
    // Each instance draws its own point in the jitter window, once.
    let jitter = random_fraction();
    let mut failures = 0u32;
    let mut waiting_for_other = false;
    loop {
        let wait = step(&config, &certs, &state, jitter, &mut failures, &mut waiting_for_other).await;
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// One wake-up of the task; how long to sleep before the next.
async fn step(
    config: &AcmeConfig,
    certs: &Certificates,
    state: &StateDir,
    jitter: f64,
    failures: &mut u32,
    waiting_for_other: &mut bool,
) -> Duration {
    if let Err(e) = state.create() {
        *failures += 1;
        let wait = schedule::backoff(*failures, schedule::Failure::Local);
        tracing::error!(dir = %state.path().display(), error = %e, retry_in = ?wait, "ACME state directory unusable");
        return wait;
    }
    pick_up(certs, state);
    let now = SystemTime::now();
    let due = due_at(config, certs.current().as_deref(), jitter);
    if due > now {
        *waiting_for_other = false;
        return due.duration_since(now).unwrap_or_default().min(PICKUP);
    }
    let guard = match state.try_lock() {
        Ok(Some(guard)) => guard,
        Ok(None) => {
            if !*waiting_for_other {
                tracing::info!(dir = %state.path().display(), "another instance is ordering the certificate; waiting for it");
                *waiting_for_other = true;
            }
            return FLEET_POLL;
        }
        Err(e) => {
            *failures += 1;
            let wait = schedule::backoff(*failures, schedule::Failure::Local);
            tracing::error!(dir = %state.path().display(), error = %e, retry_in = ?wait, "cannot take the ACME lock");
            return wait;
        }
    };
    *waiting_for_other = false;
    // The last holder may have just written one.
    pick_up(certs, state);
    let renewing = certs.current();
    if due_at(config, renewing.as_deref(), jitter) > SystemTime::now() {
        return Duration::ZERO;
    }
    let started = std::time::Instant::now();
    tracing::info!(
        domains = ?config.domains,
        directory = %config.directory,
        challenge = config.challenge.as_str(),
        renewing = renewing.as_ref().map(|c| c.serial.as_str()).unwrap_or(""),
        "ordering a certificate"
    );
    let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, order::obtain(config, certs, state)).await;
    let result = match attempt {
        Ok(Ok(pem)) => Issued::from_pem(pem.as_bytes()).map_err(order::OrderError::Bundle).and_then(|issued| {
            state.write_certificate(pem.as_bytes()).map(|()| issued).map_err(order::OrderError::State)
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => {
            certs.clear_answers();
            Err(order::OrderError::Acme(instant_acme::Error::Timeout(None)))
        }
    };
    drop(guard);
    match result {
        Ok(issued) => {
            *failures = 0;
            tracing::info!(
                serial = %issued.serial,
                not_after = %humantime::format_rfc3339_seconds(issued.not_after),
                renew_at = %humantime::format_rfc3339_seconds(schedule::renew_at(issued.not_before, issued.not_after, config.renew_before, jitter)),
                replaced = renewing.as_ref().map(|c| c.serial.as_str()).unwrap_or(""),
                took_ms = started.elapsed().as_millis() as u64,
                "{}",
                if renewing.is_some() { "certificate renewed; new handshakes use it" } else { "certificate obtained; TLS is available" }
            );
            certs.install(issued);
            Duration::ZERO
        }
        Err(e) => {
            *failures += 1;
            let wait = schedule::backoff(*failures, e.kind());
            tracing::error!(
                error = %e,
                failures = *failures,
                retry_in = ?wait,
                serving = renewing.as_ref().map(|c| c.serial.as_str()).unwrap_or("nothing"),
                "certificate order failed"
            );
            metrics::acme_order_failed();
            wait
        }
    }
}

/// When the certificate served now is due for renewal; now if there is none or it
/// does not name every configured domain.
fn due_at(config: &AcmeConfig, current: Option<&Issued>, jitter: f64) -> SystemTime {
    match current {
        Some(c) if c.covers(&config.domains) => {
            schedule::renew_at(c.not_before, c.not_after, config.renew_before, jitter)
        }
        _ => SystemTime::UNIX_EPOCH,
    }
}

/// Serves what the state directory holds if it is new (another instance's renewal).
fn pick_up(certs: &Certificates, state: &StateDir) {
    match certs.load_stored(state) {
        Ok(Some(issued)) => tracing::info!(
            serial = %issued.serial,
            not_after = %humantime::format_rfc3339_seconds(issued.not_after),
            "certificate loaded from the state directory; new handshakes use it"
        ),
        Ok(None) => {}
        Err(e) => tracing::warn!(error = %e, "stored certificate not used"),
    }
}

/// A number from 0 to 1 from the system's random source.
fn random_fraction() -> f64 {
    let mut bytes = [0u8; 4];
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    match provider.secure_random.fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / f64::from(u32::MAX),
        Err(_) => 0.5,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn certs(state_dir: &std::path::Path) -> (Arc<Certificates>, AcmeConfig) {
        let text = format!(
            "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\ntls = \"starttls\"\n\
             [[backend]]\naddress = \"127.0.0.1:25\"\n\
             [acme]\ndirectory = \"https://ca.test/dir\"\ndomains = [\"mx.example.com\"]\nstate_dir = \"{}\"\n",
            state_dir.display()
        );
        let config = crate::config::parse(&text).unwrap().config.acme.unwrap();
        (Certificates::new(&config), config)
    }

    /// A self-signed bundle for `names`, valid from `days_from`, for `days` days.
    fn bundle(names: &[&str], days_from: i64, days: i64) -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() as i64;
        let day = |d: i64| epoch + Duration::from_secs((now + d * 86_400) as u64);
        params.not_before = day(days_from);
        params.not_after = day(days_from + days);
        format!("{}{}", params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    #[test]
    fn a_stored_certificate_is_served_unless_expired() {
        let dir = tempfile::tempdir().unwrap();
        let (certs, config) = certs(dir.path());
        let state = StateDir::new(dir.path());
        assert!(!certs.ready() && certs.server_config().is_none() && certs.expiry().is_none());
        assert!(matches!(certs.load_stored(&state), Ok(None)));

        state.write_certificate(bundle(&["mx.example.com"], -100, 10).as_bytes()).unwrap();
        assert!(certs.load_stored(&state).unwrap_err().contains("expired"));
        assert!(!certs.ready());

        state.write_certificate(bundle(&["mx.example.com"], -1, 90).as_bytes()).unwrap();
        let loaded = certs.load_stored(&state).unwrap().expect("a new certificate");
        assert!(certs.ready() && certs.server_config().is_some());
        assert_eq!(certs.expiry(), Some(loaded.not_after));
        // Read again: the same one is not "new".
        assert!(certs.load_stored(&state).unwrap().is_none());
        // Due well ahead: 30 days before the end of 90.
        let due = due_at(&config, certs.current().as_deref(), 0.0);
        assert_eq!(due, loaded.not_after - config.renew_before);
    }

    #[test]
    fn a_certificate_for_other_names_is_due_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let (certs, config) = certs(dir.path());
        let state = StateDir::new(dir.path());
        state.write_certificate(bundle(&["old.example.com"], -1, 90).as_bytes()).unwrap();
        certs.load_stored(&state).unwrap();
        // Served meanwhile, but ordered again for the configured names.
        assert!(certs.ready());
        assert_eq!(due_at(&config, certs.current().as_deref(), 0.5), SystemTime::UNIX_EPOCH);
    }

    #[test]
    fn tls_alpn_answers_are_made_and_taken_down() {
        let dir = tempfile::tempdir().unwrap();
        let (certs, _) = certs(dir.path());
        certs.answer_tls_alpn("MX.example.com", &[7u8; 32]).unwrap();
        assert!(lock(&certs.tls_alpn.0).contains_key("mx.example.com"));
        certs.answer_http("t", "t.k");
        certs.clear_answers();
        assert!(lock(&certs.tls_alpn.0).is_empty() && certs.http_answer("t").is_none());
    }
}
