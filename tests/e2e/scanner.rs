//! The scanner chain from the field: client 127.0.0.77 -> Portcullis (transparent) ->
//! clamsmtpd (XClient: on) with clamd -> Postfix. Postfix must see 127.0.0.77, and the
//! scanner must stop an EICAR body.

use crate::support;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use support::*;

/// The 68-byte EICAR anti-virus test string.
const EICAR: &str = r"X5O!P%@AP[4\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

struct Scanner {
    listen: std::net::SocketAddr,
    children: Vec<Child>,
    dir: PathBuf,
}

impl Drop for Scanner {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_scanner(mta: std::net::SocketAddr) -> Scanner {
    let dir = tempfile::Builder::new().prefix("portcullis-clam-").tempdir().unwrap().keep();
    let d = dir.display();
    std::fs::create_dir_all(dir.join("db")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    // A one-line signature database: no download needed.
    let hex: String = EICAR.as_bytes()[..40].iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(dir.join("db/local.ndb"), format!("Eicar-Test-Signature-Local:0:*:{hex}\n")).unwrap();
    std::fs::write(
        dir.join("clamd.conf"),
        format!(
            "Foreground true\nLocalSocket {d}/clamd.sock\nDatabaseDirectory {d}/db\nUser root\nLogFile {d}/clamd.log\n"
        ),
    )
    .unwrap();
    let listen: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    std::fs::write(
        dir.join("clamsmtpd.conf"),
        format!(
            "OutAddress: {mta}\nListen: {listen}\nClamAddress: {d}/clamd.sock\nTempDirectory: {d}/tmp\n\
             User: clamsmtp\nXClient: on\nAction: drop\n"
        ),
    )
    .unwrap();
    Command::new("chmod").args(["-R", "a+rwx"]).arg(dir.join("tmp")).status().unwrap();
    let clamd = Command::new("clamd")
        .arg("-c")
        .arg(dir.join("clamd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut scanner = Scanner { listen, children: vec![clamd], dir };
    let socket = scanner.dir.join("clamd.sock");
    wait_until(Duration::from_secs(60), || socket.exists(), "clamd's socket");
    let clamsmtpd = Command::new("clamsmtpd")
        .args(["-d", "1", "-f"])
        .arg(scanner.dir.join("clamsmtpd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    scanner.children.push(clamsmtpd);
    wait_until(Duration::from_secs(20), || std::net::TcpStream::connect(listen).is_ok(), "clamsmtpd listening");
    scanner
}

#[test]
fn real_client_through_a_scanner_and_eicar_stopped() {
    if !need(&["postfix", "swaks", "clamd", "clamsmtpd"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let scanner = start_scanner(pf.plain);
    let proxy =
        Proxy::start(&Conf::new().listener("mx", "127.0.0.1:0", "").backend(scanner.listen, "transparent", "").text());
    let send = |mark: &str, body: &str| swaks_from_77(proxy.addr("mx"), "u@example.com", mark, &["--body", body]);
    let clean = marker("scanner-clean");
    let (ok, transcript) = send(&clean, "a clean message");
    assert!(ok, "{transcript}");
    let msg = pf.delivered(&clean);
    // clamsmtpd names the client itself (XCLIENT NAME); the address is what matters.
    let logged = pf.logged_client(&msg.queue_id);
    assert!(logged.ends_with("[127.0.0.77]"), "the MTA must see the real client, saw {logged}");

    let infected = marker("scanner-eicar");
    let (_, transcript) = send(&infected, EICAR);
    assert!(transcript.contains("Virus Detected"), "{transcript}");
    // Give a wrongly passed message time to arrive before saying it did not.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(pf.count(&infected), 0, "the EICAR message must not be delivered");
}
