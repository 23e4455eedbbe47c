//! The command line as a user types it.

use std::io::Write;
use std::process::{Command, Stdio};

fn hash_password(user: &str) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args(["hash-password", user])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A refused name exits before reading the password.
    let _ = child.stdin.take().unwrap().write_all(b"secret\n");
    let out = child.wait_with_output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn hash_password_refuses_names_the_users_file_cannot_hold() {
    for name in ["#ops", "two words", "tab\there", "a:b", "esc\u{1b}"] {
        let (ok, stdout, stderr) = hash_password(name);
        assert!(!ok && stdout.is_empty(), "{name:?}: {stdout}");
        assert!(stderr.contains("user name may not"), "{name:?}: {stderr}");
    }
    let (ok, stdout, _) = hash_password("ops");
    assert!(ok && stdout.starts_with("ops:$argon2id$"), "{stdout}");
}
