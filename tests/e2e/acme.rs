//! Automatic certificates (`[acme]`) against Debian's pebble, Let's Encrypt's test CA:
//! started privately with its own config and its own HTTPS certificate (made here with
//! rcgen), asking a small DNS server (python3 dnslib) that answers `*.acme.test` with
//! 127.0.0.1, and really validating (never `PEBBLE_VA_ALWAYS_VALID`). Portcullis runs as
//! a process of its own, its log in a file the tests read.

use crate::support::{Conf, TestCert, free_port, have_python_module, http_get, need, wait_until};
use rustls::pki_types::{CertificateDer, ServerName};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const NAME: &str = "mx.acme.test";

fn peers() -> bool {
    // Both are checked so that each missing one is named.
    let pebble = need(&["pebble", "python3"]);
    pebble && have_python_module("dnslib")
}

// === the DNS server ===

const DNS_SCRIPT: &str = r#"
import sys, time
from dnslib import RR, QTYPE, A, RCODE
from dnslib.server import DNSServer, BaseResolver, DNSLogger

class Resolver(BaseResolver):
    def resolve(self, request, handler):
        reply = request.reply()
        name = str(request.q.qname).rstrip('.').lower()
        if name == 'acme.test' or name.endswith('.acme.test'):
            if request.q.qtype == QTYPE.A:
                reply.add_answer(RR(request.q.qname, QTYPE.A, rdata=A('127.0.0.1'), ttl=60))
        else:
            reply.header.rcode = RCODE.NXDOMAIN
        return reply

port = int(sys.argv[1])
quiet = DNSLogger(log='-request,-reply,-truncated,-error', prefix=False)
for tcp in (False, True):
    DNSServer(Resolver(), port=port, address='127.0.0.1', tcp=tcp, logger=quiet).start_thread()
while True:
    time.sleep(1)
"#;

struct Dns {
    port: u16,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Dns {
    fn start() -> Dns {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("dns.py");
        std::fs::write(&script, DNS_SCRIPT).unwrap();
        let port = free_port();
        let child = Command::new("python3")
            .arg(&script)
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok(), "dnslib listening");
        Dns { port, child, _dir: dir }
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === pebble ===

struct Pebble {
    child: Child,
    api: u16,
    management: u16,
    /// The CA of pebble's own HTTPS certificate: `[acme] ca_file`.
    ca_file: PathBuf,
    ca: CertificateDer<'static>,
    dir: tempfile::TempDir,
}

impl Pebble {
    /// pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port`;
    /// certificates valid for `validity` (pebble's default, 5 years, when `None`).
    fn start(dns: &Dns, http_port: u16, tls_port: u16, validity: Option<Duration>) -> Pebble {
        let dir = tempfile::Builder::new().prefix("portcullis-pebble-").tempdir().unwrap();
        // pebble's API certificate: a small CA and a leaf for 127.0.0.1 and localhost.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "pebble API test CA");
        let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &ca)
            .unwrap();
        let (ca_file, cert, key) = (dir.path().join("ca.pem"), dir.path().join("api.pem"), dir.path().join("api.key"));
        std::fs::write(&ca_file, ca.pem()).unwrap();
        std::fs::write(&cert, leaf.pem()).unwrap();
        std::fs::write(&key, leaf_key.serialize_pem()).unwrap();
        let (api, management) = (free_port(), free_port());
        let validity =
            validity.map_or(String::new(), |v| format!(",\n    \"certificateValidityPeriod\": {}", v.as_secs()));
        let config = format!(
            r#"{{
  "pebble": {{
    "listenAddress": "127.0.0.1:{api}",
    "managementListenAddress": "127.0.0.1:{management}",
    "certificate": "{cert}",
    "privateKey": "{key}",
    "httpPort": {http_port},
    "tlsPort": {tls_port},
    "ocspResponderURL": "",
    "externalAccountBindingRequired": false{validity}
  }}
}}"#,
            cert = cert.display(),
            key = key.display(),
        );
        let file = dir.path().join("pebble.json");
        std::fs::write(&file, config).unwrap();
        let log = std::fs::File::create(dir.path().join("pebble.log")).unwrap();
        let child = Command::new("pebble")
            .arg("-config")
            .arg(&file)
            .arg("-dnsserver")
            .arg(format!("127.0.0.1:{}", dns.port))
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .env("PEBBLE_AUTHZREUSE", "0")
            .env_remove("PEBBLE_VA_ALWAYS_VALID")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let at = |port: u16| -> SocketAddr { format!("127.0.0.1:{port}").parse().unwrap() };
        wait_until(Duration::from_secs(20), || TcpStream::connect(at(api)).is_ok(), "pebble listening");
        wait_until(Duration::from_secs(20), || TcpStream::connect(at(management)).is_ok(), "pebble management");
        Pebble { child, api, management, ca_file, ca: ca.der().clone(), dir }
    }

    fn directory(&self) -> String {
        format!("https://127.0.0.1:{}/dir", self.api)
    }

    /// pebble's issuing root, from its management port (`/roots/0`).
    fn root(&self) -> CertificateDer<'static> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).unwrap();
        let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
        let tcp = TcpStream::connect(("127.0.0.1", self.management)).unwrap();
        tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let conn = rustls::ClientConnection::new(Arc::new(config), ServerName::try_from("127.0.0.1").unwrap()).unwrap();
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        write!(tls, "GET /roots/0 HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n").unwrap();
        let mut response = Vec::new();
        // pebble closes without close_notify; what was read is what counts.
        let _ = tls.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        let pem = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
        rustls::pki_types::pem::PemObject::from_pem_slice(pem.as_bytes()).expect("a PEM root from /roots/0")
    }

    fn signal(&self, signal: i32) {
        // SAFETY: a signal to the child this test started.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("pebble.log")).unwrap_or_default()
    }
}

impl Drop for Pebble {
    fn drop(&mut self) {
        self.signal(libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === Portcullis as a process, its log kept ===

struct Proxy {
    child: Child,
    log: PathBuf,
    started: Instant,
}

impl Proxy {
    fn start(dir: &Path, config: &Conf) -> Proxy {
        let file = dir.join(format!("p-{}.toml", free_port()));
        std::fs::write(&file, config.text()).unwrap();
        let log = file.with_extension("log");
        let started = Instant::now();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(&file)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Proxy { child, log, started }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The `n`th log line (1: the first) that holds `text`, waiting up to `limit`.
    fn wait_log(&self, text: &str, n: usize, limit: Duration) -> String {
        self.wait_log_or(text, n, limit, String::new)
    }

    /// [`Proxy::wait_log`], with `context()` (a peer's log) in the failure message.
    fn wait_log_or(&self, text: &str, n: usize, limit: Duration, context: impl Fn() -> String) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.log().lines().filter(|l| l.contains(text)).nth(n - 1) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no {n}. log line with {text:?} within {limit:?}; log:\n{}\n{}",
                self.log(),
                context()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ports {
    plain: u16,
    starttls: u16,
    implicit: u16,
    http: u16,
    admin: u16,
}

impl Ports {
    fn new() -> Ports {
        Ports {
            plain: free_port(),
            starttls: free_port(),
            implicit: free_port(),
            http: free_port(),
            admin: free_port(),
        }
    }

    fn at(port: u16) -> SocketAddr {
        format!("127.0.0.1:{port}").parse().unwrap()
    }
}

/// A config with a plain, a STARTTLS and an implicit-TLS listener and `[acme]`.
fn config(ports: &Ports, acme: &str) -> Conf {
    Conf::new()
        .listener("plain", &format!("127.0.0.1:{}", ports.plain), "")
        .listener("mx", &format!("127.0.0.1:{}", ports.starttls), "tls = \"starttls\"")
        .listener("smtps", &format!("127.0.0.1:{}", ports.implicit), "tls = \"implicit\"")
        .backend("127.0.0.1:9", "xforward", "check_interval = \"0s\"")
        .set("admin", &format!("bind = \"127.0.0.1:{}\"", ports.admin))
        .set("acme", acme)
}

fn acme_keys(pebble: &Pebble, state: &Path, challenge: &str, http: u16) -> String {
    format!(
        "directory = \"{}\"\ncontact = \"mailto:postmaster@acme.test\"\ndomains = [\"{NAME}\"]\n\
         challenge = \"{challenge}\"\nhttp_bind = \"127.0.0.1:{http}\"\nstate_dir = \"{}\"\nca_file = \"{}\"",
        pebble.directory(),
        state.display(),
        pebble.ca_file.display()
    )
}

// === SMTP and TLS clients ===

fn reply(reader: &mut impl BufRead) -> String {
    let mut all = String::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return all;
        }
        all.push_str(&line);
        if line.len() < 4 || line.as_bytes()[3] == b' ' {
            return all;
        }
    }
}

fn command<S: Read + Write>(stream: &mut BufReader<S>, line: &str) -> String {
    stream.get_mut().write_all(format!("{line}\r\n").as_bytes()).unwrap();
    stream.get_mut().flush().unwrap();
    reply(stream)
}

/// A plain session's EHLO reply (after the greeting), and the stream for more.
fn ehlo(port: u16) -> (String, BufReader<TcpStream>) {
    let tcp = TcpStream::connect(Ports::at(port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut s = BufReader::new(tcp);
    let greeting = reply(&mut s);
    assert!(greeting.starts_with("220 "), "{greeting}");
    s.get_mut().write_all(b"EHLO client.acme.test\r\n").unwrap();
    (reply(&mut s), s)
}

fn trusting(root: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(root.clone()).unwrap();
    Arc::new(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

type Tls = BufReader<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// The serial of the leaf certificate a finished handshake got.
fn serial(tls: &Tls) -> String {
    let leaf = &tls.get_ref().conn.peer_certificates().unwrap()[0];
    x509_parser::parse_x509_certificate(leaf).unwrap().1.raw_serial_as_string().replace(':', "")
}

/// STARTTLS on `port`, the certificate verified against `root` for [`NAME`]; the
/// session after its second EHLO.
fn starttls(port: u16, root: &CertificateDer<'static>) -> Result<Tls, String> {
    let (ehlo, mut s) = ehlo(port);
    if !ehlo.contains("STARTTLS") {
        return Err(format!("STARTTLS not offered: {ehlo}"));
    }
    let go = command(&mut s, "STARTTLS");
    if !go.starts_with("220 ") {
        return Err(go);
    }
    let conn = rustls::ClientConnection::new(trusting(root), ServerName::try_from(NAME).unwrap()).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, s.into_inner()));
    let ehlo = command(&mut tls, "EHLO client.acme.test");
    if !ehlo.starts_with("250") {
        return Err(format!("after the handshake: {ehlo:?}"));
    }
    Ok(tls)
}

/// An implicit-TLS session on `port`, verified against `root`: its serial after the greeting.
fn implicit(port: u16, root: &CertificateDer<'static>) -> Result<String, String> {
    let tcp = TcpStream::connect(Ports::at(port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let conn = rustls::ClientConnection::new(trusting(root), ServerName::try_from(NAME).unwrap()).unwrap();
    let mut tls = BufReader::new(rustls::StreamOwned::new(conn, tcp));
    let mut greeting = String::new();
    tls.read_line(&mut greeting).map_err(|e| e.to_string())?;
    if !greeting.starts_with("220 ") {
        return Err(format!("greeting {greeting:?}"));
    }
    let serial = serial(&tls);
    command(&mut tls, "QUIT");
    Ok(serial)
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

// === the tests ===

#[test]
fn first_certificate_over_http01_then_restart_with_the_ca_stopped() {
    if !peers() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let dns = Dns::start();
    let ports = Ports::new();
    let pebble = Pebble::start(&dns, ports.http, ports.implicit, None);
    let root = pebble.root();
    let proxy = Proxy::start(work.path(), &config(&ports, &acme_keys(&pebble, &state, "http-01", ports.http)));

    let obtained = proxy.wait_log_or("certificate obtained", 1, Duration::from_secs(60), || pebble.log());
    let took = proxy.started.elapsed();
    eprintln!("ACME http-01: first certificate {took:?} after start; {obtained}");
    assert!(proxy.log().contains("answered an HTTP-01 validation"), "{}", proxy.log());

    // Served at once, chaining to pebble's root, on STARTTLS and implicit TLS.
    let mut session = starttls(ports.starttls, &root).unwrap();
    let first = serial(&session);
    assert_eq!(command(&mut session, "QUIT").get(..3), Some("221"));
    assert_eq!(implicit(ports.implicit, &root).unwrap(), first);
    // The plain listener serves as ever.
    let (plain, _) = ehlo(ports.plain);
    assert!(plain.starts_with("250"), "{plain}");

    // Kept in the state directory, readable by the owner only.
    for file in ["account.json", "certificate.pem"] {
        assert_eq!(mode(&state.join(file)), 0o600, "{file}");
    }
    // The expiry is a metric.
    let (_, metrics) = http_get(Ports::at(ports.admin), "/metrics");
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("portcullis_tls_certificate_expiry_timestamp_seconds{{name=\"{NAME}\"}}")))
        .unwrap_or_else(|| panic!("no expiry metric in:\n{metrics}"));
    let expiry: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs_f64();
    assert!(expiry > now + 86_400.0, "{line}");

    // Restart with the CA stopped: the stored certificate serves from the first
    // connection on, and nothing is ordered.
    drop(proxy);
    pebble.signal(libc::SIGSTOP);
    let ports2 = Ports { http: free_port(), ..Ports::new() };
    let again = Proxy::start(work.path(), &config(&ports2, &acme_keys(&pebble, &state, "http-01", ports2.http)));
    again.wait_log("serving the stored certificate", 1, Duration::from_secs(10));
    wait_until(Duration::from_secs(10), || TcpStream::connect(Ports::at(ports2.starttls)).is_ok(), "restarted");
    let mut session = starttls(ports2.starttls, &root).unwrap();
    assert_eq!(serial(&session), first);
    assert_eq!(command(&mut session, "QUIT").get(..3), Some("221"));
    assert!(!again.log().contains("ordering a certificate"), "{}", again.log());
}

#[test]
fn first_certificate_over_tls_alpn01() {
    if !peers() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let dns = Dns::start();
    let ports = Ports::new();
    // pebble validates TLS-ALPN-01 on the implicit-TLS listener.
    let pebble = Pebble::start(&dns, ports.http, ports.implicit, None);
    let root = pebble.root();
    let proxy = Proxy::start(work.path(), &config(&ports, &acme_keys(&pebble, &state, "tls-alpn-01", ports.http)));
    let obtained = proxy.wait_log_or("certificate obtained", 1, Duration::from_secs(60), || pebble.log());
    eprintln!("ACME tls-alpn-01: first certificate {:?} after start; {obtained}", proxy.started.elapsed());
    assert!(proxy.log().contains("answered a TLS-ALPN-01 validation"), "{}", proxy.log());
    // No HTTP listener for this challenge.
    assert!(TcpStream::connect(Ports::at(ports.http)).is_err());
    let serial = implicit(ports.implicit, &root).unwrap();
    let mut session = starttls(ports.starttls, &root).unwrap();
    assert_eq!(self::serial(&session), serial);
    command(&mut session, "QUIT");
}

#[test]
fn renewal_reaches_the_next_handshake_while_an_open_session_goes_on() {
    if !peers() {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    let dns = Dns::start();
    let ports = Ports::new();
    // 30-second certificates: with renew_before (30 days) longer than their life, each
    // is renewed after a third of it.
    let pebble = Pebble::start(&dns, ports.http, ports.implicit, Some(Duration::from_secs(30)));
    let root = pebble.root();
    let proxy = Proxy::start(work.path(), &config(&ports, &acme_keys(&pebble, &state, "http-01", ports.http)));
    proxy.wait_log_or("certificate obtained", 1, Duration::from_secs(60), || pebble.log());
    let mut open = starttls(ports.starttls, &root).unwrap();
    let first = serial(&open);

    let renewed = proxy.wait_log("certificate renewed", 1, Duration::from_secs(60));
    eprintln!("ACME renewal log line: {renewed}");
    assert!(renewed.contains(&format!("replaced={first}")) || renewed.contains(&first), "{renewed}");
    let mut next = starttls(ports.starttls, &root).unwrap();
    let second = serial(&next);
    assert_ne!(second, first, "the next handshake should get the renewed certificate");
    assert_eq!(implicit(ports.implicit, &root).unwrap(), second);
    command(&mut next, "QUIT");
    // The session opened before the renewal is still in TLS, on its old certificate.
    assert_eq!(command(&mut open, "NOOP").get(..3), Some("250"));
    assert_eq!(serial(&open), first);
    assert_eq!(command(&mut open, "QUIT").get(..3), Some("221"));
}

#[test]
fn an_unreachable_ca_leaves_plain_smtp_serving_and_is_retried() {
    let work = tempfile::tempdir().unwrap();
    let ca = TestCert::write(work.path(), "ca.acme.test");
    let ports = Ports::new();
    let closed = free_port();
    let acme = format!(
        "directory = \"https://127.0.0.1:{closed}/dir\"\ndomains = [\"{NAME}\"]\nhttp_bind = \"127.0.0.1:{}\"\n\
         state_dir = \"{}\"\nca_file = \"{}\"",
        ports.http,
        work.path().join("state").display(),
        ca.cert.display()
    );
    let proxy = Proxy::start(work.path(), &config(&ports, &acme));
    let first = proxy.wait_log("certificate order failed", 1, Duration::from_secs(20));
    assert!(first.contains("retry_in=5s"), "{first}");
    // Plain SMTP serves meanwhile; STARTTLS is neither offered nor accepted.
    let (plain, _) = ehlo(ports.plain);
    assert!(plain.starts_with("250"), "{plain}");
    let (offer, mut s) = ehlo(ports.starttls);
    assert!(offer.starts_with("250") && !offer.contains("STARTTLS"), "{offer}");
    assert_eq!(command(&mut s, "STARTTLS"), "454 4.7.0 TLS not available due to temporary reason\r\n");
    assert!(command(&mut s, "NOOP").starts_with("250"));
    // Implicit TLS: the handshake fails (no certificate to send).
    let anything: CertificateDer<'static> = rustls::pki_types::pem::PemObject::from_pem_file(&ca.cert).unwrap();
    assert!(implicit(ports.implicit, &anything).is_err());
    // And it tries again, with backoff.
    let second = proxy.wait_log("certificate order failed", 2, Duration::from_secs(20));
    eprintln!("ACME unreachable CA: {first}\n{second}");
    assert!(second.contains("failures=2") && second.contains("retry_in=10s"), "{second}");
}

#[test]
fn a_fleet_instance_waits_for_the_lock_holder_and_serves_its_certificate() {
    let work = tempfile::tempdir().unwrap();
    let state = work.path().join("state");
    std::fs::create_dir_all(&state).unwrap();
    // Another instance holds the lock (an flock on state_dir/lock).
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(state.join("lock")).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX | libc::LOCK_NB) }, 0);
    let ca = TestCert::write(work.path(), "ca.acme.test");
    let ports = Ports::new();
    let acme = format!(
        "directory = \"https://127.0.0.1:{}/dir\"\ndomains = [\"{NAME}\"]\nhttp_bind = \"127.0.0.1:{}\"\n\
         state_dir = \"{}\"\nca_file = \"{}\"",
        free_port(),
        ports.http,
        state.display(),
        ca.cert.display()
    );
    let proxy = Proxy::start(work.path(), &config(&ports, &acme));
    proxy.wait_log("another instance is ordering the certificate", 1, Duration::from_secs(20));
    // The holder writes its certificate (chain, then key) and lets go.
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec![NAME.to_string()]).unwrap().self_signed(&key).unwrap();
    std::fs::write(state.join("certificate.pem"), format!("{}{}", cert.pem(), key.serialize_pem())).unwrap();
    drop(lock);
    proxy.wait_log("certificate loaded from the state directory", 1, Duration::from_secs(20));
    let mut session = starttls(ports.starttls, cert.der()).unwrap();
    command(&mut session, "QUIT");
    assert!(!proxy.log().contains("ordering a certificate"), "{}", proxy.log());
}
