//! Recipient validation (`[[recipients]]`) against real peers: a private slapd
//! (Debian's OpenLDAP, its own config and database, entries loaded with slapadd) over
//! plain LDAP, StartTLS and ldaps:// with a test CA; a scripted backend that accepts
//! every address and counts what reaches it, and Postfix configured the same way; the
//! file source with a reload; the directory stopped mid-run; filter injection; two
//! instances sharing one Redis (slapd's own log counts the searches).

use crate::support;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::*;

const SUFFIX: &str = "dc=corp,dc=test";
const SERVICE_DN: &str = "cn=portcullis,dc=corp,dc=test";
const SERVICE_PASSWORD: &str = "svc-pass-1";
/// Active Directory's recipient filter: primary address or any alias (`smtp:` in
/// proxyAddresses; `SMTP:` marks the primary one, matched alike: the attribute
/// compares without regard to case, as AD's does).
pub const AD_FILTER: &str = "(|(mail=%s)(proxyAddresses=smtp:%s))";

/// proxyAddresses as Active Directory compares it (case-insensitive); Debian's
/// msuser.schema declares it without an equality rule, so it would never match.
const PROXY_SCHEMA: &str = "attributetype ( 1.3.6.1.4.1.55555.1.1 NAME 'proxyAddresses'
  EQUALITY caseIgnoreMatch SUBSTR caseIgnoreSubstringsMatch
  SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 )
objectclass ( 1.3.6.1.4.1.55555.2.1 NAME 'mailRecipient' SUP top AUXILIARY MAY ( proxyAddresses ) )
";

const ENTRIES: &str = "dn: dc=corp,dc=test
objectClass: dcObject
objectClass: organization
o: corp
dc: corp

dn: ou=people,dc=corp,dc=test
objectClass: organizationalUnit
ou: people

dn: cn=portcullis,dc=corp,dc=test
objectClass: person
cn: portcullis
sn: service
userPassword: svc-pass-1

dn: uid=alice,ou=people,dc=corp,dc=test
objectClass: inetOrgPerson
objectClass: mailRecipient
uid: alice
cn: Alice Smith
sn: Smith
mail: alice@corp.test
proxyAddresses: SMTP:alice@corp.test
proxyAddresses: smtp:a.smith@corp.test

dn: uid=bob,ou=people,dc=corp,dc=test
objectClass: inetOrgPerson
uid: bob
cn: Bob Jones
sn: Jones
mail: Bob.Jones@corp.test

dn: uid=star,ou=people,dc=corp,dc=test
objectClass: inetOrgPerson
uid: star
cn: Backslash
sn: Star
mail: back\\slash@corp.test
";

/// A private slapd: plain LDAP (StartTLS offered) and ldaps:// with a certificate
/// from its own test CA; `-d 256` logs every search (`SRCH`) to `log`.
pub struct Slapd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    pub ldap: u16,
    pub ldaps: u16,
    /// The test CA, to trust for ldaps:// and StartTLS.
    pub ca: PathBuf,
    pub password_file: PathBuf,
    log: PathBuf,
}

impl Slapd {
    /// None (after a SKIPPED line) when slapd is not installed; under CI that fails.
    pub fn start() -> Option<Slapd> {
        if !need(&["slapd", "slapadd", "ldapsearch"]) {
            return None;
        }
        let dir = tempfile::Builder::new().prefix("portcullis-slapd-").tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("db")).unwrap();
        let ca = write_ca(d);
        std::fs::write(d.join("proxy.schema"), PROXY_SCHEMA).unwrap();
        std::fs::write(d.join("entries.ldif"), ENTRIES).unwrap();
        let password_file = d.join("bind-password");
        std::fs::write(&password_file, format!("{SERVICE_PASSWORD}\n")).unwrap();
        let conf = format!(
            "include /etc/ldap/schema/core.schema
include /etc/ldap/schema/cosine.schema
include /etc/ldap/schema/inetorgperson.schema
include {d}/proxy.schema
pidfile {d}/slapd.pid
modulepath /usr/lib/ldap
moduleload back_mdb
loglevel 256
TLSCACertificateFile {d}/ca.crt
TLSCertificateFile {d}/server.crt
TLSCertificateKeyFile {d}/server.key
database mdb
suffix \"{SUFFIX}\"
rootdn \"cn=admin,{SUFFIX}\"
rootpw admin-pass
directory {d}/db
maxsize 10485760
access to attrs=userPassword by anonymous auth by * none
access to * by users read by * none
",
            d = d.display()
        );
        std::fs::write(d.join("slapd.conf"), conf).unwrap();
        let out = Command::new("slapadd")
            .args(["-f", &path_str(&d.join("slapd.conf")), "-l", &path_str(&d.join("entries.ldif"))])
            .output()
            .unwrap();
        assert!(out.status.success(), "slapadd: {}", String::from_utf8_lossy(&out.stderr));
        let mut slapd = Slapd {
            log: d.join("slapd.log"),
            dir,
            child: None,
            ldap: free_port(),
            ldaps: free_port(),
            ca,
            password_file,
        };
        slapd.restart();
        Some(slapd)
    }

    /// Starts it (again) on the same ports; the log is appended to.
    pub fn restart(&mut self) {
        self.stop();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let urls = format!("ldap://127.0.0.1:{}/ ldaps://127.0.0.1:{}/", self.ldap, self.ldaps);
        let child = Command::new("slapd")
            .args(["-f", &path_str(&self.dir.path().join("slapd.conf")), "-h", &urls, "-d", "256"])
            .args(["-u", "root", "-g", "root"])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        let port = self.ldap;
        wait_until(Duration::from_secs(20), || TcpStream::connect(("127.0.0.1", port)).is_ok(), "slapd listening");
        // The directory answers (not only listens): ldapsearch as the service account.
        let out = Command::new("ldapsearch")
            .args(["-x", "-H", &self.url(), "-D", SERVICE_DN, "-w", SERVICE_PASSWORD, "-b", SUFFIX])
            .arg("(uid=alice)")
            .arg("1.1")
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("dn: uid=alice"), "{out:?}");
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("ldap://127.0.0.1:{}", self.ldap)
    }

    /// Searches slapd logged whose filter holds `needle`.
    pub fn searches(&self, needle: &str) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(" SRCH ") && l.contains("filter=") && l.contains(needle))
            .count()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A CA and a server certificate it signed (127.0.0.1 and localhost); the CA's path.
fn write_ca(dir: &Path) -> PathBuf {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, "Portcullis test CA");
    let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca)
        .unwrap();
    std::fs::write(dir.join("ca.crt"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.crt"), server.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir.join("ca.crt")
}

/// A backend that accepts every address (as the servers this feature protects do)
/// and counts the connections and recipients that reach it.
pub struct AcceptAll {
    pub addr: SocketAddr,
    pub connections: Arc<AtomicUsize>,
    pub rcpts: Arc<std::sync::Mutex<Vec<String>>>,
}

impl AcceptAll {
    pub fn start() -> AcceptAll {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let rcpts = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (c, r) = (connections.clone(), rcpts.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                c.fetch_add(1, Ordering::SeqCst);
                let r = r.clone();
                std::thread::spawn(move || serve_accept_all(stream, &r));
            }
        });
        AcceptAll { addr, connections, rcpts }
    }

    pub fn rcpts(&self) -> Vec<String> {
        self.rcpts.lock().unwrap().clone()
    }
}

fn serve_accept_all(stream: TcpStream, rcpts: &std::sync::Mutex<Vec<String>>) {
    let mut out = stream.try_clone().unwrap();
    let mut input = BufReader::new(stream);
    let _ = out.write_all(b"220 backend.test ESMTP\r\n");
    let mut line = String::new();
    loop {
        line.clear();
        if input.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let upper = line.to_ascii_uppercase();
        let reply: &[u8] = if upper.starts_with("EHLO") {
            b"250-backend.test\r\n250-PIPELINING\r\n250 8BITMIME\r\n"
        } else if upper.starts_with("RCPT") {
            rcpts.lock().unwrap().push(line.trim_end().to_string());
            b"250 2.1.5 Ok\r\n"
        } else if upper.starts_with("DATA") {
            let _ = out.write_all(b"354 go ahead\r\n");
            loop {
                line.clear();
                if input.read_line(&mut line).unwrap_or(0) == 0 || line == ".\r\n" {
                    break;
                }
            }
            b"250 2.0.0 Ok: queued\r\n"
        } else if upper.starts_with("QUIT") {
            let _ = out.write_all(b"221 2.0.0 Bye\r\n");
            return;
        } else {
            b"250 2.0.0 Ok\r\n"
        };
        if out.write_all(reply).is_err() {
            return;
        }
    }
}

/// The proxy's config: `backend`, local domains corp.test and example.org, then `tables`.
pub fn config(backend: SocketAddr, extra: &str, tables: &str) -> String {
    format!(
        "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[relay]\nlocal_domains = [\"corp.test\", \"example.org\"]\n\
         [[backend]]\naddress = \"{backend}\"\nidentity = \"none\"\ncheck_interval = \"0s\"\nreuse = false\n{extra}\n{tables}"
    )
}

pub fn ldap_table(slapd: &Slapd, url: &str, filter: &str, more: &str) -> String {
    format!(
        "[[recipients]]\ndomains = [\"corp.test\"]\nldap = \"{url}\"\nbind_dn = \"{SERVICE_DN}\"\n\
         bind_password_file = \"{}\"\nbase = \"{SUFFIX}\"\nfilter = \"{filter}\"\n{more}\n",
        path_str(&slapd.password_file)
    )
}

/// MAIL, then each recipient: its reply's first line.
fn rcpts(c: &mut Smtp, list: &[&str]) -> Vec<String> {
    c.cmd("MAIL FROM:<sender@example.net>", "250");
    list.iter()
        .map(|r| {
            c.send(&format!("RCPT TO:<{r}>\r\n"));
            c.reply().lines().next().unwrap_or("").to_string()
        })
        .collect()
}

fn expect(replies: &[String], list: &[&str], codes: &[&str]) {
    for ((reply, rcpt), code) in replies.iter().zip(list).zip(codes) {
        assert!(reply.starts_with(code), "<{rcpt}>: expected {code}, got {reply:?}");
    }
}

#[test]
fn recipients_directory_answers_at_rcpt_and_the_backend_sees_only_known_ones() {
    let Some(slapd) = Slapd::start() else { return };
    init_logs();
    let backend = AcceptAll::start();
    let table = ldap_table(&slapd, &slapd.url(), AD_FILTER, "recipient_delimiter = \"+\"\ncache_ttl = \"0s\"");
    let proxy = Proxy::start(&config(backend.addr, "", &table));
    let mut c = Smtp::hello("127.0.0.31", proxy.addr("mx"));
    let list = [
        "alice@corp.test",
        "ALICE@CORP.TEST",
        "a.smith@corp.test",
        "bob.jones@corp.test",
        "alice+news@corp.test",
        "nobody@corp.test",
        "PostMaster@corp.test",
        "anyone@example.org",
    ];
    let replies = rcpts(&mut c, &list);
    expect(
        &replies,
        &list,
        &[
            "250",
            "250",
            "250",
            "250",
            "250",
            "550 5.1.1 <nobody@corp.test>: Recipient address rejected: User unknown",
            "250",
            "250",
        ],
    );
    c.cmd("DATA", "354");
    c.send("Subject: t\r\n\r\nhello\r\n.\r\n");
    assert!(c.reply().starts_with("250"));
    c.cmd("QUIT", "221");
    let seen = backend.rcpts();
    assert_eq!(seen.len(), 7, "{seen:?}");
    assert!(!seen.iter().any(|r| r.contains("nobody")), "{seen:?}");
    // One search for each directory lookup (postmaster and example.org: none), the
    // extension form first, then the base address (Postfix's order).
    assert_eq!(slapd.searches("alice+news@corp.test"), 1);
    assert_eq!(slapd.searches("(mail=alice@corp.test)"), 3, "{}", slapd.log());
    assert_eq!(slapd.searches("postmaster"), 0);
}

#[test]
fn recipients_over_tls_ldaps_and_starttls_with_a_test_ca() {
    let Some(slapd) = Slapd::start() else { return };
    init_logs();
    let backend = AcceptAll::start();
    let ca = path_str(&slapd.ca);
    for (url, more) in [
        (format!("ldaps://127.0.0.1:{}", slapd.ldaps), format!("ca_file = \"{ca}\"")),
        (slapd.url(), format!("starttls = true\nca_file = \"{ca}\"")),
    ] {
        let proxy = Proxy::start(&config(backend.addr, "", &ldap_table(&slapd, &url, "(mail=%s)", &more)));
        let mut c = Smtp::hello("127.0.0.32", proxy.addr("mx"));
        let list = ["alice@corp.test", "carol@corp.test"];
        expect(&rcpts(&mut c, &list), &list, &["250", "550 5.1.1"]);
    }
    // Trusting another CA: the handshake fails, so the directory is unavailable (451),
    // never "unknown".
    let other = TestCert::write(&tempfile::tempdir().unwrap().keep(), "other");
    let more = format!("ca_file = \"{}\"", path_str(&other.cert));
    let url = format!("ldaps://127.0.0.1:{}", slapd.ldaps);
    let proxy = Proxy::start(&config(backend.addr, "", &ldap_table(&slapd, &url, "(mail=%s)", &more)));
    let mut c = Smtp::hello("127.0.0.32", proxy.addr("mx"));
    let list = ["alice@corp.test", "carol@corp.test"];
    expect(&rcpts(&mut c, &list), &list, &["451 4.4.3", "451 4.4.3"]);
}

#[test]
fn recipients_filter_injection_never_matches() {
    let Some(slapd) = Slapd::start() else { return };
    init_logs();
    let backend = AcceptAll::start();
    let proxy = Proxy::start(&config(
        backend.addr,
        "[limits]\nmax_errors = 100",
        &ldap_table(&slapd, &slapd.url(), AD_FILTER, "cache_ttl = \"0s\""),
    ));
    let mut c = Smtp::hello("127.0.0.33", proxy.addr("mx"));
    // Each would match alice (or everyone) if it reached the filter unescaped.
    let list = [
        "*@corp.test",
        "alice*@corp.test",
        "*",
        "\"*)(mail=*\"@corp.test",
        "\"x)(|(mail=*\"@corp.test",
        "\"alice@corp.test)(mail=*\"@corp.test",
        "\"alice\\\\2a\"@corp.test",
        // Unescaped, `\5c` would be read by the directory as a backslash.
        "back\\5cslash@corp.test",
    ];
    let replies = rcpts(&mut c, &list);
    for (reply, rcpt) in replies.iter().zip(&list) {
        assert!(!reply.starts_with('2'), "<{rcpt}> must not be accepted: {reply:?}");
    }
    // The entry whose address holds a backslash is found by its exact address.
    for exact in ["back\\slash@corp.test", "\"back\\\\slash\"@corp.test"] {
        c.send(&format!("RCPT TO:<{exact}>\r\n"));
        let reply = c.reply();
        assert!(reply.starts_with("250"), "{exact}: {reply:?}");
    }
    // A NUL never reaches the directory: the command is refused first.
    c.send("RCPT TO:<a\0b@corp.test>\r\n");
    assert!(!c.reply().starts_with('2'));
    assert_eq!(backend.rcpts().len(), 2, "{:?}", backend.rcpts());
    // The filters slapd received held the escaped values (it logs the hex in upper case).
    assert!(slapd.searches("(mail=\\2A@corp.test)") >= 1, "{}", slapd.log());
    assert!(slapd.searches("(mail=alice\\2A@corp.test)") >= 1);
}

#[test]
fn recipients_unknown_addresses_count_as_errors_and_end_a_harvest() {
    let Some(slapd) = Slapd::start() else { return };
    init_logs();
    let backend = AcceptAll::start();
    let proxy = Proxy::start(&config(
        backend.addr,
        "[limits]\nmax_errors = 3",
        &ldap_table(&slapd, &slapd.url(), "(mail=%s)", ""),
    ));
    let mut c = Smtp::hello("127.0.0.34", proxy.addr("mx"));
    c.cmd("MAIL FROM:<sender@example.net>", "250");
    c.cmd("RCPT TO:<guess1@corp.test>", "550 5.1.1");
    c.cmd("RCPT TO:<guess2@corp.test>", "550 5.1.1");
    c.send("RCPT TO:<guess3@corp.test>\r\n");
    assert!(c.reply().starts_with("550 5.1.1"));
    let last = c.reply();
    assert!(last.starts_with("421 4.7.0"), "{last:?}");
    assert_eq!(c.reply(), "", "closed after max_errors");
    assert!(backend.rcpts().is_empty());
}

#[test]
fn recipients_directory_stopped_mid_run_tempfails_then_accept_passes() {
    let Some(mut slapd) = Slapd::start() else { return };
    init_logs();
    let backend = AcceptAll::start();
    let extra = "[limits]\nmax_errors = 3";
    let cached = ldap_table(&slapd, &slapd.url(), "(mail=%s)", "timeout = \"2s\"");
    let proxy = Proxy::start(&config(backend.addr, extra, &cached));
    let mut c = Smtp::hello("127.0.0.35", proxy.addr("mx"));
    expect(&rcpts(&mut c, &["alice@corp.test"]), &["alice@corp.test"], &["250"]);
    slapd.stop();
    c.cmd("RSET", "250");
    // The cached answer stands; a new address gets 451, and more of them than
    // max_errors do not end the session (the fault is ours).
    let list = ["alice@corp.test", "carol@corp.test", "dave@corp.test", "erin@corp.test", "frank@corp.test"];
    let replies = rcpts(&mut c, &list);
    expect(&replies, &list, &["250", "451 4.4.3", "451 4.4.3", "451 4.4.3", "451 4.4.3"]);
    assert!(replies[1].contains("<carol@corp.test>"), "{replies:?}");
    c.cmd("NOOP", "250");
    // on_error = "accept": the backend decides (it accepts everything).
    let accepting = ldap_table(&slapd, &slapd.url(), "(mail=%s)", "timeout = \"2s\"\non_error = \"accept\"");
    let changes = proxy.reload(&config(backend.addr, extra, &accepting));
    assert!(changes.iter().any(|l| l.contains("recipients[0].on_error: tempfail -> accept")), "{changes:?}");
    c.cmd("RSET", "250");
    expect(&rcpts(&mut c, &["carol@corp.test"]), &["carol@corp.test"], &["250"]);
    assert!(backend.rcpts().iter().any(|r| r.contains("carol")));
    // The directory back: answers again once its backoff has passed.
    slapd.restart();
    let started = Instant::now();
    loop {
        c.cmd("RSET", "250");
        let reply = rcpts(&mut c, &["zed@corp.test"]);
        if reply[0].starts_with("550 5.1.1") {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(40), "still {reply:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn recipients_file_source_read_again_on_reload() {
    init_logs();
    let backend = AcceptAll::start();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recipients");
    std::fs::write(&file, "# staff\nalice@corp.test\n@example.org\n").unwrap();
    let table = format!("[[recipients]]\ndomains = [\"corp.test\", \"example.org\"]\nfile = \"{}\"\n", path_str(&file));
    let text = config(backend.addr, "", &table);
    let proxy = Proxy::start(&text);
    let mut c = Smtp::hello("127.0.0.36", proxy.addr("mx"));
    let list = ["alice@corp.test", "Alice@Corp.Test", "bob@corp.test", "anyone@example.org"];
    expect(&rcpts(&mut c, &list), &list, &["250", "250", "550 5.1.1", "250"]);
    std::fs::write(&file, "alice@corp.test\nbob@corp.test\n").unwrap();
    proxy.reload(&text);
    c.cmd("RSET", "250");
    let list = ["bob@corp.test", "anyone@example.org"];
    expect(&rcpts(&mut c, &list), &list, &["250", "550 5.1.1"]);
    // A file that cannot be read keeps the running tables (and config).
    std::fs::remove_file(&file).unwrap();
    let loaded = portcullis::config::parse(&text);
    assert!(loaded.is_err(), "check reports the missing file");
    c.cmd("RSET", "250");
    expect(&rcpts(&mut c, &["bob@corp.test"]), &["bob@corp.test"], &["250"]);
}

#[test]
fn recipients_postfix_backend_never_sees_an_unknown_recipient() {
    if !need(&["postfix"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recipients");
    std::fs::write(&file, "known@example.com\n").unwrap();
    let mark = marker("recipients_postfix");
    let unknown = format!("{mark}-nobody@example.com");
    let proxy = Proxy::start(&format!(
        "[[listener]]\nname = \"mx\"\nbind = \"127.0.0.1:0\"\n[relay]\nlocal_domains = [\"example.com\"]\n\
         [[backend]]\naddress = \"{}\"\nidentity = \"xforward\"\n\
         [[recipients]]\ndomains = [\"example.com\"]\nfile = \"{}\"\n",
        pf.plain,
        path_str(&file)
    ));
    let mut c = Smtp::hello("127.0.0.37", proxy.addr("mx"));
    c.cmd("MAIL FROM:<s@example.org>", "250");
    c.cmd(&format!("RCPT TO:<{unknown}>"), "550 5.1.1");
    c.cmd("RCPT TO:<known@example.com>", "250");
    c.cmd("DATA", "354");
    c.send(&format!("Subject: {mark}\r\n\r\nbody\r\n.\r\n"));
    assert!(c.reply().starts_with("250"));
    let delivered = pf.delivered(&mark);
    assert!(!delivered.text.contains(&unknown));
    assert!(!pf.log().contains(&unknown), "Postfix saw the unknown recipient");
}

#[test]
fn recipients_two_instances_share_answers_through_redis() {
    let Some(slapd) = Slapd::start() else { return };
    if !need(&["redis-server", "redis-cli"]) {
        return;
    }
    init_logs();
    let redis = Redis::start();
    let backend = AcceptAll::start();
    let store = format!("[store]\nredis = \"{}\"\nprefix = \"rcpt-test:\"", redis.url());
    let text = config(backend.addr, &store, &ldap_table(&slapd, &slapd.url(), "(mail=%s)", ""));
    let (first, second) = (Proxy::start(&text), Proxy::start(&text));
    let list = ["alice@corp.test", "mallory@corp.test"];
    let mut c = Smtp::hello("127.0.0.38", first.addr("mx"));
    expect(&rcpts(&mut c, &list), &list, &["250", "550 5.1.1"]);
    assert_eq!((slapd.searches("alice@corp.test"), slapd.searches("mallory@corp.test")), (1, 1));
    // The answers reach the store in the background.
    wait_until(
        Duration::from_secs(5),
        || redis.cli(&["--scan", "--pattern", "rcpt-test:rcpt:*"]).lines().count() == 2,
        "two answers in the store",
    );
    let mut c = Smtp::hello("127.0.0.39", second.addr("mx"));
    expect(&rcpts(&mut c, &list), &list, &["250", "550 5.1.1"]);
    assert_eq!(
        (slapd.searches("alice@corp.test"), slapd.searches("mallory@corp.test")),
        (1, 1),
        "the second instance answered from the store"
    );
    let ttl: i64 = redis
        .cli(&["--scan", "--pattern", "rcpt-test:rcpt:*"])
        .lines()
        .map(|k| redis.cli(&["PTTL", k]).trim().parse::<i64>().unwrap())
        .min()
        .unwrap();
    assert!(ttl > 500_000 && ttl <= 600_000, "cache_ttl 10m: {ttl} ms left");
}

// === benchmark (bench/recipients.sh) ===

/// Mean RCPT round trip through the proxy at `proxy`, over `n` RCPTs of `rcpt`.
fn rcpt_round_trip(proxy: &Proxy, rcpt: &str, n: usize) -> Duration {
    let mut c = Smtp::hello("127.0.0.40", proxy.addr("mx"));
    c.cmd("MAIL FROM:<sender@example.net>", "250");
    // Warm: the backend connection, the directory connection, the cache.
    c.cmd(&format!("RCPT TO:<{rcpt}>"), "250");
    let started = Instant::now();
    for _ in 0..n {
        c.send(&format!("RCPT TO:<{rcpt}>\r\n"));
        let reply = c.reply();
        assert!(reply.starts_with("250"), "{reply:?}");
    }
    started.elapsed() / n as u32
}

/// An attacker trying `count` addresses: 100 RCPTs a transaction, RSET and MAIL again,
/// a new connection whenever the proxy closes one. Returns the client connections used.
fn dictionary_attack(proxy: &Proxy, count: usize) -> usize {
    let mut sent = 0;
    let mut connections = 0;
    while sent < count {
        connections += 1;
        let mut c = Smtp::hello("127.0.0.41", proxy.addr("mx"));
        'session: loop {
            c.send("MAIL FROM:<spammer@example.net>\r\n");
            if !c.reply().starts_with("250") {
                break;
            }
            for _ in 0..100 {
                if sent == count {
                    break 'session;
                }
                c.send(&format!("RCPT TO:<guess{sent}@corp.test>\r\n"));
                sent += 1;
                let reply = c.reply();
                if reply.is_empty() || reply.starts_with("421") {
                    break 'session;
                }
                if reply.starts_with("550") {
                    // The 421 that ends a session comes as a reply of its own.
                    c.send("NOOP\r\n");
                    let next = c.reply();
                    if next.is_empty() || next.starts_with("421") {
                        break 'session;
                    }
                }
            }
            c.send("RSET\r\n");
            if !c.reply().starts_with("250") {
                break;
            }
        }
    }
    connections
}

#[test]
#[ignore = "a benchmark: bench/recipients.sh"]
fn recipients_bench() {
    let Some(slapd) = Slapd::start() else { return };
    let n: usize = std::env::var("RCPT_BENCH_N").ok().and_then(|v| v.parse().ok()).unwrap_or(2000);
    let backend = AcceptAll::start();
    let limits = "[limits]\nmax_recipients = 1000000";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("recipients");
    let mut listing: String = (0..10_000).map(|i| format!("user{i}@corp.test\n")).collect();
    listing.push_str("alice@corp.test\n");
    std::fs::write(&file, listing).unwrap();
    let file_table = format!("[[recipients]]\ndomains = [\"corp.test\"]\nfile = \"{}\"\n", path_str(&file));
    let variants = [
        ("no table", String::new()),
        ("file (10,001 entries)", file_table.clone()),
        ("ldap, cached", ldap_table(&slapd, &slapd.url(), AD_FILTER, "")),
        ("ldap, uncached (cache_ttl 0s)", ldap_table(&slapd, &slapd.url(), AD_FILTER, "cache_ttl = \"0s\"")),
    ];
    let mut baseline = Duration::ZERO;
    println!("RCPT round trip through Portcullis, mean of {n} (known recipient, backend accepts):");
    for (name, table) in &variants {
        let proxy = Proxy::start(&config(backend.addr, limits, table));
        let took = rcpt_round_trip(&proxy, "alice@corp.test", n);
        if table.is_empty() {
            baseline = took;
        }
        println!(
            "  {name:32} {:>8.1} µs   lookup cost {:>8.1} µs",
            micros(took),
            micros(took.saturating_sub(baseline))
        );
    }
    println!("dictionary attack, 1,000 unknown addresses (limits.max_errors = 10, max_recipients 100):");
    for (name, table) in [("no table", String::new()), ("file table", file_table)] {
        let backend = AcceptAll::start();
        let proxy = Proxy::start(&config(backend.addr, "", &table));
        let clients = dictionary_attack(&proxy, 1000);
        std::thread::sleep(Duration::from_millis(300));
        println!(
            "  {name:12} client connections {clients:>4}   backend connections {:>4}   backend RCPTs {:>5}",
            backend.connections.load(Ordering::SeqCst),
            backend.rcpts().len()
        );
    }
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
