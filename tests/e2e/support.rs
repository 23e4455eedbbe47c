//! Shared harness for black-box tests: the proxy started in-process on port 0, a
//! private Postfix instance as the real backend, a blocking SMTP client that can bind
//! any 127.0.0.0/8 address, and swaks.

#![allow(dead_code)]

use portcullis::server::Server;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Whether Python can import `module`; like [`have`], a failure under CI.
pub fn have_python_module(module: &str) -> bool {
    let found =
        Command::new("python3").args(["-c", &format!("import {module}")]).output().is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("python3 module {module} is required under CI but is not installed");
        }
        eprintln!(
            "SKIPPED: python3 module {module} is not installed (pip install it, or run under CI=1 to make this a failure)"
        );
    }
    found
}

/// A plain HTTP GET: the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").unwrap();
    let mut response = String::new();
    std::io::Read::read_to_string(&mut stream, &mut response).unwrap();
    let code = response.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    (code, body)
}

/// Whether every program a test needs is installed; each missing one prints a
/// `SKIPPED:` line, and under CI a missing one fails the test instead.
pub fn need(programs: &[&str]) -> bool {
    // Every program is checked, so that each missing one is named.
    let missing = programs.iter().filter(|p| !have(p)).count();
    missing == 0
}

/// True if `program` is installed. Missing peers fail the test under CI and skip it
/// (loudly) elsewhere.
pub fn have(program: &str) -> bool {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {program} || test -x /usr/sbin/{program}"))
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        if std::env::var_os("CI").is_some() {
            panic!("{program} is required under CI but is not installed");
        }
        eprintln!("SKIPPED: {program} is not installed (install it, or run under CI=1 to make this a failure)");
    }
    found
}

/// A port that was free a moment ago, for a server a test starts. It is taken below the
/// kernel's ephemeral range (`ip_local_port_range`, 32768 and up), so no outgoing
/// connection can take it as its source port before the server binds it; each port is
/// handed out once per test process (which starts at a place of its own in the range).
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20000;
    const PORTS: u32 = 12000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(u32::MAX, std::process::id() % PORTS, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..PORTS {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::Relaxed) % PORTS) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + PORTS)
}

// === Postfix ===

pub struct Postfix {
    pub dir: PathBuf,
    /// smtpd that trusts XCLIENT and XFORWARD from 127.0.0.0/8.
    pub plain: SocketAddr,
    /// smtpd that expects a PROXY header (smtpd_upstream_proxy_protocol=haproxy).
    pub proxied: SocketAddr,
    /// smtpd offering STARTTLS with a certificate for "localhost" (`cert`).
    pub tls: SocketAddr,
    /// smtpd offering AUTH, checked by Dovecot (see [`Postfix::start_dovecot`]).
    pub sasl: SocketAddr,
    /// The certificate of the `tls` service: a CA file for backend verification.
    pub cert: PathBuf,
}

/// A self-signed certificate and its key, written as PEM files.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCert {
    pub fn write(dir: &Path, name: &str) -> TestCert {
        std::fs::create_dir_all(dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec![name.to_string()]).unwrap();
        let (cert, key) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
        std::fs::write(&cert, ck.cert.pem()).unwrap();
        std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
        TestCert { cert, key }
    }
}

/// A delivered message and what Postfix logged for it.
pub struct Delivered {
    pub text: String,
    pub queue_id: String,
}

impl Postfix {
    /// One private instance per test binary, stopped when the test process exits.
    pub fn shared() -> &'static Postfix {
        static PF: OnceLock<Postfix> = OnceLock::new();
        PF.get_or_init(Postfix::start)
    }

    fn start() -> Postfix {
        let dir = tempfile::Builder::new().prefix("portcullis-postfix-").tempdir().unwrap().keep();
        let d = dir.display().to_string();
        let (plain, proxied, tls, sasl) = (free_port(), free_port(), free_port(), free_port());
        let cert = TestCert::write(&dir.join("tls"), "localhost");
        let script = format!(
            r#"set -e
D={d}
chmod 755 $D
mkdir -p $D/etc $D/queue $D/data $D/mail
chown postfix $D/data; chown 65534:65534 $D/mail
: > $D/etc/main.cf
cp /etc/postfix/master.cf $D/etc/master.cf
dirs=$(postconf -h alternate_config_directories)
postconf -e "alternate_config_directories = $dirs $D/etc"
postconf -c $D/etc -e "queue_directory = $D/queue" "data_directory = $D/data" \
  "maillog_file = $D/postfix.log" "maillog_file_prefixes = $D" \
  'inet_interfaces = 127.0.0.1' 'inet_protocols = all' 'mydestination =' \
  'myhostname = backend.test' 'syslog_name = pf-test' \
  'virtual_mailbox_domains = example.com remote.test' "virtual_mailbox_base = $D/mail" \
  'virtual_mailbox_maps = static:inbox/' \
  'virtual_uid_maps = static:65534' 'virtual_gid_maps = static:65534' \
  'smtpd_authorized_xclient_hosts = 127.0.0.0/8' \
  'smtpd_authorized_xforward_hosts = 127.0.0.0/8' \
  'mynetworks = 127.0.0.1/32' \
  'smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination' \
  'compatibility_level = 3.6'
postconf -c $D/etc -M# 'smtp/inet'
postconf -c $D/etc -M "{plain}/inet={plain} inet n - n - - smtpd" \
  "{proxied}/inet={proxied} inet n - n - - smtpd -o smtpd_upstream_proxy_protocol=haproxy" \
  "{tls}/inet={tls} inet n - n - - smtpd -o smtpd_tls_security_level=may -o smtpd_tls_loglevel=1 \
     -o smtpd_tls_cert_file=$D/tls/localhost.crt -o smtpd_tls_key_file=$D/tls/localhost.key" \
  "{sasl}/inet={sasl} inet n - n - - smtpd -o smtpd_sasl_auth_enable=yes -o smtpd_sasl_type=dovecot \
     -o smtpd_sasl_path=$D/dovecot/auth"
chmod 644 $D/tls/*
postfix -c $D/etc start
# Stop this instance when the test process is gone, however it ends.
(while kill -0 {pid} 2>/dev/null; do sleep 1; done; postfix -c $D/etc stop >/dev/null 2>&1
 postconf -e "alternate_config_directories = $(postconf -h alternate_config_directories | sed "s# $D/etc##")") \
  </dev/null >/dev/null 2>&1 &
"#,
            pid = std::process::id()
        );
        let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
        assert!(
            out.status.success(),
            "postfix did not start: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.join("postfix.log")).unwrap_or_default()
        );
        let at = |port: u16| format!("127.0.0.1:{port}").parse().unwrap();
        let pf = Postfix { dir, plain: at(plain), proxied: at(proxied), tls: at(tls), sasl: at(sasl), cert: cert.cert };
        // Not the `sasl` service: a connection there before Dovecot runs makes its smtpd
        // die, and Postfix's master then throttles that service for a minute. The master
        // opens all its sockets at once, so the others tell that it is up.
        for addr in [pf.plain, pf.proxied, pf.tls] {
            wait_until(Duration::from_secs(20), || TcpStream::connect(addr).is_ok(), "postfix listening");
        }
        pf
    }

    /// Starts (once) a private Dovecot that checks passwords for the `sasl` service:
    /// user "bob", password "builder".
    pub fn start_dovecot(&self) {
        static STARTED: OnceLock<()> = OnceLock::new();
        STARTED.get_or_init(|| {
            let d = self.dir.display().to_string();
            let script = format!(
                r#"set -e
D={d}/dovecot
mkdir -p $D/run $D/state
echo 'bob:{{PLAIN}}builder' > $D/passwd
cat > $D/dovecot.conf <<CONF
base_dir = $D/run
state_dir = $D/state
log_path = $D/dovecot.log
protocols =
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = username_format=%u $D/passwd
}}
userdb {{
  driver = static
  args = uid=65534 gid=65534 home=/nonexistent
}}
service auth {{
  unix_listener $D/auth {{
    mode = 0666
  }}
}}
CONF
# Dovecot keeps inherited descriptors open: give it none of ours.
dovecot -c $D/dovecot.conf </dev/null >$D/start.out 2>&1 || {{ cat $D/start.out; exit 1; }}
(while kill -0 {pid} 2>/dev/null; do sleep 1; done; kill $(cat $D/run/master.pid)) </dev/null >/dev/null 2>&1 &
"#,
                pid = std::process::id()
            );
            let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
            assert!(
                out.status.success(),
                "dovecot did not start: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let socket = self.dir.join("dovecot/auth");
            wait_until(Duration::from_secs(20), || socket.exists(), "dovecot's auth socket");
        });
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("postfix.log")).unwrap_or_default()
    }

    fn maildir(&self) -> PathBuf {
        self.dir.join("mail/inbox/new")
    }

    /// The delivered message whose text contains `marker`, waiting for delivery.
    pub fn delivered(&self, marker: &str) -> Delivered {
        let mut found = None;
        wait_until(
            Duration::from_secs(30),
            || {
                found = self.find(marker);
                found.is_some()
            },
            &format!("a delivered message containing {marker:?}"),
        );
        found.unwrap()
    }

    /// Messages delivered so far that contain `marker`.
    pub fn count(&self, marker: &str) -> usize {
        self.messages().filter(|t| t.contains(marker)).count()
    }

    fn messages(&self) -> impl Iterator<Item = String> {
        std::fs::read_dir(self.maildir())
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
    }

    fn find(&self, marker: &str) -> Option<Delivered> {
        let text = self.messages().find(|t| t.contains(marker))?;
        // "... by backend.test (Postfix) with ESMTP id 4Xyz..."
        let queue_id = text.split(" id ").nth(1)?.split(|c: char| c.is_whitespace() || c == ';').next()?.to_string();
        Some(Delivered { text, queue_id })
    }

    /// The client Postfix logged for a queue id: "unknown[127.0.0.77]".
    pub fn logged_client(&self, queue_id: &str) -> String {
        self.client_line(queue_id).split(',').next().unwrap().to_string()
    }

    /// Postfix's whole `client=` log entry for a queue id (with `orig_client=` after XFORWARD).
    pub fn client_line(&self, queue_id: &str) -> String {
        let needle = format!("{queue_id}: client=");
        let mut client = String::new();
        wait_until(
            Duration::from_secs(10),
            || {
                client = self
                    .log()
                    .lines()
                    .find_map(|l| l.split_once(&needle).map(|(_, rest)| rest.to_string()))
                    .unwrap_or_default();
                !client.is_empty()
            },
            &format!("a client= log line for {queue_id}"),
        );
        client
    }
}

pub fn wait_until(limit: Duration, mut done: impl FnMut() -> bool, what: &str) {
    let start = Instant::now();
    while !done() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

// === the proxy ===

/// Portcullis running in-process on its own runtime; stopped on drop.
pub struct Proxy {
    pub addrs: Vec<(String, SocketAddr)>,
    /// The admin endpoint, when the config has `[admin]`.
    pub admin: Option<SocketAddr>,
    pub reloader: portcullis::server::Reloader,
    shutdown: CancellationToken,
}

impl Proxy {
    pub fn start(config_text: &str) -> Proxy {
        let config = portcullis::config::parse(config_text).unwrap_or_else(|e| panic!("{e}\n{config_text}")).config;
        let server = Server::bind(config).unwrap();
        let (addrs, admin, reloader) = (server.local_addrs(), server.admin_addr(), server.reloader());
        let shutdown = CancellationToken::new();
        let token = shutdown.clone();
        std::thread::spawn(move || server.run(token).unwrap());
        Proxy { addrs, admin, reloader, shutdown }
    }

    /// Applies a new config to the running proxy; returns the changes it logged.
    pub fn reload(&self, config_text: &str) -> Vec<String> {
        let loaded = portcullis::config::parse(config_text).unwrap_or_else(|e| panic!("{e}\n{config_text}"));
        self.reloader.apply(loaded).unwrap()
    }

    pub fn addr(&self, listener: &str) -> SocketAddr {
        self.addrs.iter().find(|(n, _)| n == listener).unwrap().1
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // Stop accepting; sessions still open drain in the background.
        self.shutdown.cancel();
    }
}

pub fn init_logs() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        let _ = tracing_subscriber::fmt().with_test_writer().with_env_filter("portcullis=debug").try_init();
    });
}

// === a blocking SMTP client ===

pub struct Smtp {
    reader: BufReader<TcpStream>,
}

impl Smtp {
    /// Connects from `from` (any 127.0.0.0/8 address, or ::1) to `to`.
    pub fn connect_from(from: &str, to: SocketAddr) -> Smtp {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::for_address(to), Type::STREAM, None).unwrap();
        socket.bind(&SocketAddr::new(from.parse().unwrap(), 0).into()).unwrap();
        socket.connect_timeout(&to.into(), Duration::from_secs(5)).unwrap();
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        Smtp { reader: BufReader::new(stream) }
    }

    pub fn send(&mut self, bytes: &str) {
        self.reader.get_mut().write_all(bytes.as_bytes()).unwrap();
    }

    /// One complete reply, or "" when the server closed the connection.
    pub fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).unwrap_or(0) == 0 {
                return all;
            }
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] == b' ' {
                return all;
            }
        }
    }

    pub fn cmd(&mut self, line: &str, expect: &str) -> String {
        self.send(&format!("{line}\r\n"));
        let reply = self.reply();
        assert!(reply.starts_with(expect), "{line:?}: expected {expect:?}, got {reply:?}");
        reply
    }

    /// Greeting and EHLO.
    pub fn hello(from: &str, to: SocketAddr) -> Smtp {
        let mut c = Smtp::connect_from(from, to);
        let greeting = c.reply();
        // One line, or several (the pregreet test's "220-" first): the last says "220 ".
        assert!(greeting.lines().last().unwrap_or("").starts_with("220 "), "greeting: {greeting:?}");
        c.cmd("EHLO client.test", "250");
        c
    }

    /// MAIL from s@example.org, RCPT to u@example.com, DATA, then `body` and the final
    /// dot, stopping at the first refusal; returns every reply received.
    pub fn try_message(&mut self, body: &str) -> Vec<String> {
        let mut replies = Vec::new();
        for line in ["MAIL FROM:<s@example.org>", "RCPT TO:<u@example.com>", "DATA"] {
            self.send(&format!("{line}\r\n"));
            let reply = self.reply();
            let go_on = reply.starts_with('2') || reply.starts_with('3');
            replies.push(reply);
            if !go_on {
                return replies;
            }
        }
        self.send(&format!("{body}\r\n.\r\n"));
        replies.push(self.reply());
        replies
    }

    /// A whole message; returns the reply to end of data.
    pub fn message(&mut self, from: &str, rcpts: &[&str], body: &str) -> String {
        self.cmd(&format!("MAIL FROM:<{from}>"), "250");
        for r in rcpts {
            self.cmd(&format!("RCPT TO:<{r}>"), "250");
        }
        self.cmd("DATA", "354");
        self.send(body);
        self.send("\r\n.\r\n");
        self.reply()
    }
}

// === a network that fails on purpose ===

/// Where a [`FaultyLink`] breaks the connection to the backend.
#[derive(Clone, Copy)]
pub enum Fault {
    /// Close at once: the backend never greets.
    AtConnect,
    /// Forward until the proxy has sent `pattern`, then close both ways.
    CutAfter(&'static str),
    /// Forward until the proxy has sent `pattern`, then pass no more replies: a backend
    /// that hangs.
    StallAfter(&'static str),
}

/// A TCP relay between Portcullis and a real backend that breaks where it is told.
pub struct FaultyLink {
    pub addr: SocketAddr,
}

impl FaultyLink {
    pub fn start(target: SocketAddr, fault: Fault) -> FaultyLink {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                std::thread::spawn(move || relay(client, target, fault));
            }
        });
        FaultyLink { addr }
    }
}

fn relay(client: TcpStream, target: SocketAddr, fault: Fault) {
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let pattern = match fault {
        Fault::AtConnect => return,
        Fault::CutAfter(p) | Fault::StallAfter(p) => p.as_bytes(),
    };
    let Ok(backend) = TcpStream::connect(target) else { return };
    let stalled = Arc::new(AtomicBool::new(false));
    // Replies: backend -> proxy, unless stalled.
    let (mut from_backend, mut to_client) = (backend.try_clone().unwrap(), client.try_clone().unwrap());
    let stop_replies = stalled.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = from_backend.read(&mut buf) {
            if n == 0 || (!stop_replies.load(Ordering::SeqCst) && to_client.write_all(&buf[..n]).is_err()) {
                break;
            }
        }
        let _ = to_client.shutdown(std::net::Shutdown::Both);
    });
    // Commands and data: proxy -> backend, watching for the pattern.
    let (mut from_client, mut to_backend) = (client, backend);
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = from_client.read(&mut buf) {
        if n == 0 {
            break;
        }
        let start = seen.len();
        seen.extend_from_slice(&buf[..n]);
        let found = seen.windows(pattern.len()).position(|w| w == pattern);
        match found {
            Some(at) if !stalled.load(Ordering::SeqCst) => {
                let upto = (at + pattern.len()).saturating_sub(start).min(n);
                let _ = to_backend.write_all(&buf[..upto]);
                match fault {
                    Fault::CutAfter(_) => {
                        std::thread::sleep(Duration::from_millis(50));
                        let _ = to_backend.shutdown(std::net::Shutdown::Both);
                        let _ = from_client.shutdown(std::net::Shutdown::Both);
                        return;
                    }
                    _ => stalled.store(true, Ordering::SeqCst),
                }
            }
            _ => {
                if to_backend.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        }
    }
}

// === HAProxy ===

/// A real HAProxy in TCP mode in front of `target`, sending a PROXY header
/// (`send` is "send-proxy" or "send-proxy-v2").
pub struct HaProxy {
    pub addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl HaProxy {
    pub fn start(target: SocketAddr, send: &str) -> HaProxy {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(
            &cfg,
            format!(
                "global\n  maxconn 100\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 30s\n  \
                 timeout server 30s\nfrontend lb\n  bind 127.0.0.1:{port}\n  default_backend us\n\
                 backend us\n  server s1 {target} {send}\n"
            ),
        )
        .unwrap();
        let child = Command::new("haproxy")
            .arg("-f")
            .arg(&cfg)
            .arg("-db")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok(), "haproxy listening");
        HaProxy { addr, child, _dir: dir }
    }
}

impl Drop for HaProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === swaks ===

/// Runs swaks with `args`; returns (success, transcript).
pub fn swaks(args: &[&str]) -> (bool, String) {
    let out = Command::new("swaks").args(args).arg("--timeout").arg("30").output().unwrap();
    let transcript = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), transcript)
}

/// swaks from 127.0.0.77 to `server`, from s@example.org to `to`, with an
/// `X-Test: mark` header to find the message by, plus `extra` arguments.
pub fn swaks_from_77(server: SocketAddr, to: &str, mark: &str, extra: &[&str]) -> (bool, String) {
    let server = server.to_string();
    let header = format!("X-Test: {mark}");
    let mut args = vec!["--server", &server, "--local-interface", "127.0.0.77", "--from", "s@example.org", "--to", to];
    args.extend_from_slice(&["--header", &header]);
    args.extend_from_slice(extra);
    swaks(&args)
}

/// A marker unique to one test, to find its message and log lines.
pub fn marker(test: &str) -> String {
    format!("portcullis-test-{test}-{}", std::process::id())
}

pub fn path_str(p: &Path) -> String {
    p.display().to_string()
}

// === unbound: a DNS server with test zones ===

/// Debian's unbound on a loopback port, answering only from `local-data` lines (no
/// recursion), such as `"77.0.0.127.bl.test. 300 IN A 127.0.0.2"`; `zones` are made
/// static (everything else in them is NXDOMAIN).
pub struct Unbound {
    pub addr: SocketAddr,
    child: std::process::Child,
    _dir: tempfile::TempDir,
}

impl Unbound {
    pub fn start(zones: &[&str], records: &[&str]) -> Unbound {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let mut conf = format!(
            "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  \
             chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"{d}/unbound.pid\"\n  use-syslog: no\n  \
             logfile: \"{d}/unbound.log\"\n  verbosity: 1\n  access-control: 127.0.0.0/8 allow\n"
        );
        for z in zones {
            conf.push_str(&format!("  local-zone: \"{z}.\" static\n"));
        }
        for r in records {
            conf.push_str(&format!("  local-data: \"{r}\"\n"));
        }
        conf.push_str("remote-control:\n  control-enable: no\n");
        let file = dir.path().join("unbound.conf");
        std::fs::write(&file, conf).unwrap();
        let child = Command::new("unbound")
            .arg("-c")
            .arg(&file)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        // Up when it answers over TCP (the same process serves UDP).
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok(), "unbound listening");
        Unbound { addr, child, _dir: dir }
    }
}

impl Drop for Unbound {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === Redis ===

/// A throw-away redis-server on a loopback port, nothing saved.
pub struct Redis {
    pub port: u16,
    child: Option<std::process::Child>,
}

impl Redis {
    pub fn start() -> Redis {
        let port = free_port();
        let mut redis = Redis { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Stops the server (its data is lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again, empty, on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok(), "redis listening");
    }

    /// One command through redis-cli; its output.
    pub fn cli(&self, args: &[&str]) -> String {
        let out = Command::new("redis-cli").args(["-p", &self.port.to_string()]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

// === Portcullis as a process of its own ===

/// VmHWM (peak resident memory) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).unwrap().parse().unwrap()
}

/// Portcullis as a process of its own: its memory and its metrics apart from the other
/// tests of this binary. Each `127.0.0.1:0` in the config gets a free port of its own,
/// in order (`addrs`; `mx` is the first); messages are held in a temporary directory.
/// Killed on drop.
pub struct Spawned {
    pub child: std::process::Child,
    pub mx: SocketAddr,
    pub addrs: Vec<SocketAddr>,
    pub dir: tempfile::TempDir,
}

impl Spawned {
    pub fn start(config_text: &str) -> Spawned {
        Self::start_probing(config_text, 0)
    }

    /// [`Spawned::start`], waiting for `addrs[probe]` to take connections (the admin
    /// endpoint, say, so that no SMTP connection is counted before the test's own).
    pub fn start_probing(config_text: &str, probe: usize) -> Spawned {
        let dir = tempfile::tempdir().unwrap();
        let mut text = config_text.to_string();
        let mut addrs = Vec::new();
        while let Some(at) = text.find("127.0.0.1:0\"") {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
            text.replace_range(at..at + "127.0.0.1:0".len(), &addr.to_string());
            addrs.push(addr);
        }
        let file = dir.path().join("p.toml");
        std::fs::write(&file, text).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["run", "--config"])
            .arg(&file)
            .env("TMPDIR", dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let (mx, probe) = (addrs[0], addrs[probe]);
        wait_until(Duration::from_secs(10), || TcpStream::connect(probe).is_ok(), "portcullis listening");
        Spawned { child, mx, addrs, dir }
    }

    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.child.id())
    }

    /// What is left in its temporary directory besides the config.
    pub fn held_files(&self) -> Vec<PathBuf> {
        let config = self.dir.path().join("p.toml");
        std::fs::read_dir(self.dir.path()).unwrap().flatten().map(|e| e.path()).filter(|p| *p != config).collect()
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's config, built from the parts the test cares about: the rest is the tests'
/// default (`[server] hostname = "proxy.test"`, `[relay] local_domains = ["example.com"]`).
/// Keys set on one table are gathered under one header, so a test never writes a table
/// twice; `raw` text goes last, for tables of a shape of its own (a `[[milter]]`, say).
#[derive(Clone, Debug)]
pub struct Conf {
    tables: Vec<(String, Vec<String>)>,
    listeners: Vec<String>,
    backends: Vec<String>,
    raw: Vec<String>,
}

impl Default for Conf {
    fn default() -> Self {
        Conf { tables: Vec::new(), listeners: Vec::new(), backends: Vec::new(), raw: Vec::new() }
            .set("server", "hostname = \"proxy.test\"")
            .set("relay", "local_domains = [\"example.com\"]")
    }
}

impl Conf {
    pub fn new() -> Conf {
        Conf::default()
    }

    /// `lines` (`key = value`, one or more lines) in `[table]`.
    pub fn set(mut self, table: &str, lines: &str) -> Conf {
        if lines.trim().is_empty() {
            return self;
        }
        match self.tables.iter_mut().find(|(name, _)| name == table) {
            Some((_, keys)) => keys.push(lines.trim().to_string()),
            None => self.tables.push((table.to_string(), vec![lines.trim().to_string()])),
        }
        self
    }

    /// `[relay] local_domains` other than the default's (`list` as TOML array items).
    pub fn local_domains(mut self, list: &str) -> Conf {
        if let Some((_, keys)) = self.tables.iter_mut().find(|(name, _)| name == "relay") {
            keys.retain(|k| !k.starts_with("local_domains"));
        }
        self.set("relay", &format!("local_domains = [{list}]"))
    }

    /// A `[[listener]]` named `name` on `bind`, with `extra` keys.
    pub fn listener(mut self, name: &str, bind: &str, extra: &str) -> Conf {
        self.listeners.push(format!("name = \"{name}\"\nbind = \"{bind}\"\n{}", extra.trim()));
        self
    }

    /// A `[[backend]]` at `address` told the client's identity by `identity`, with
    /// `extra` keys.
    pub fn backend(mut self, address: impl std::fmt::Display, identity: &str, extra: &str) -> Conf {
        self.backends.push(format!("address = \"{address}\"\nidentity = \"{identity}\"\n{}", extra.trim()));
        self
    }

    /// TOML written out as it is, after everything else.
    pub fn raw(mut self, text: &str) -> Conf {
        self.raw.push(text.to_string());
        self
    }

    pub fn text(&self) -> String {
        let mut out = String::new();
        for listener in &self.listeners {
            out.push_str(&format!("[[listener]]\n{listener}\n"));
        }
        for backend in &self.backends {
            out.push_str(&format!("[[backend]]\n{backend}\n"));
        }
        for (table, keys) in &self.tables {
            out.push_str(&format!("[{table}]\n{}\n", keys.join("\n")));
        }
        for raw in &self.raw {
            out.push_str(raw);
            out.push('\n');
        }
        out
    }
}
