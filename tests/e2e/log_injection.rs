//! Client-controlled text in the log: AUTH user names (PLAIN and LOGIN) holding CR,
//! LF, ESC, BEL and 8-bit text, a forged "authenticated" line among them. Whatever the
//! format, each event stays one line and no control byte reaches the file.

use crate::support;

use std::process::{Command, Stdio};
use std::time::Duration;
use support::*;

const FORGED: &str = "evil\r\n2026-11-27T11:30:00.000000Z  INFO portcullis::server::session::auth: \
                      authenticated peer=10.0.0.1:1 user=alice\u{1b}[2J\u{7}\u{202e}é";

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Runs the real binary with `format`, sends the hostile names, returns its log.
fn log_of_hostile_session(format: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let hash = portcullis::auth::users::hash_password("right").unwrap();
    std::fs::write(dir.path().join("users"), format!("alice:{hash}\n")).unwrap();
    let port = free_port();
    let config = dir.path().join("p.toml");
    std::fs::write(
        &config,
        Conf::new()
            .listener("sub", &format!("127.0.0.1:{port}"), "auth = \"optional\"\nauth_plaintext = true")
            .backend("127.0.0.1:9", "none", "")
            .set(
                "auth",
                &format!("mode = \"file\"\nusers_file = \"{}\"\nmax_failures = 5", dir.path().join("users").display()),
            )
            .set("log", &format!("format = \"{format}\""))
            .text(),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["run", "--config", &config.display().to_string()])
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}").parse().unwrap();
    wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(addr).is_ok(), "portcullis listening");

    let mut c = Smtp::hello("127.0.0.88", addr);
    let plain = [b"\0".as_slice(), FORGED.as_bytes(), b"\0wrong"].concat();
    c.cmd(&format!("AUTH PLAIN {}", b64(&plain)), "535 5.7.8");
    c.cmd("AUTH LOGIN", "334");
    c.cmd(&b64(FORGED.as_bytes()), "334");
    c.cmd(&b64(b"wrong"), "535 5.7.8");
    c.cmd("RCPT TO:<a@remote.test>", "503");
    c.cmd("MAIL FROM:<\"q\\\"uote\"@example.org>", "451");
    c.cmd("QUIT", "221");
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let _ = child.wait();
    String::from_utf8_lossy(&std::fs::read(&log).unwrap()).into_owned()
}

fn assert_one_line_per_event(log: &str, format: &str) {
    assert!(!log.contains(['\r', '\u{1b}', '\u{7}', '\u{202e}']), "control characters in the {format} log:\n{log}");
    for line in log.lines() {
        let ok = match format {
            "json" => line.starts_with('{') && line.ends_with('}'),
            _ => line.starts_with(|c: char| c.is_ascii_digit()),
        };
        assert!(ok, "not a log line of its own ({format}): {line:?}\n{log}");
        assert!(!line.starts_with("2026-11-27T11:30:00"), "forged line ({format}):\n{log}");
    }
    let failed = log.lines().filter(|l| l.contains("authentication failed")).count();
    let succeeded = log.lines().filter(|l| l.contains("authenticated") && !l.contains("authentication failed")).count();
    assert_eq!((failed, succeeded), (2, 0), "{format}:\n{log}");
}

#[test]
fn hostile_user_names_stay_inside_their_log_line() {
    for format in ["text", "json"] {
        let log = log_of_hostile_session(format);
        assert_one_line_per_event(&log, format);
    }
}
