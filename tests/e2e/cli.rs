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

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(args).output().unwrap();
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

fn config_file(dir: &tempfile::TempDir, text: &str) -> String {
    let path = dir.path().join("p.toml");
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

const BASE: &str = r#"
[[listener]]
name = "mx"
bind = "0.0.0.0:25"
rules = [{ name = "bad-net", action = "reject", from = ["198.51.100.0/24"] }]
[[listener]]
name = "submission"
bind = "0.0.0.0:587"
auth = "optional"
auth_plaintext = true
[auth]
mode = "backend"
[relay]
local_domains = ["example.com"]
"#;

#[test]
fn check_refuses_an_open_relay_unless_acknowledged_and_names_each_risk() {
    let dir = tempfile::tempdir().unwrap();
    let open = format!("{BASE}networks = [\"0.0.0.0/0\"]\n[[backend]]\naddress = \"127.0.0.1:10025\"\n");
    let (ok, out) = run(&["check", "--config", &config_file(&dir, &open)]);
    assert!(!ok, "{out}");
    assert!(out.contains("error: relay.networks[0]: 0.0.0.0/0 holds every address: this is an open relay"), "{out}");

    let acknowledged = format!(
        "{BASE}networks = [\"0.0.0.0/0\"]\npublic_networks_acknowledged = [\"0.0.0.0/0\"]\nnever = [\"10.66.0.0/16\"]\n\
         [[backend]]\naddress = \"127.0.0.1:10025\"\nidentity = \"none\"\n[trust]\nproxies = [\"10.0.0.0/8\"]\n"
    );
    let (ok, out) = run(&["check", "--config", &config_file(&dir, &acknowledged)]);
    assert!(ok, "{out}");
    for warning in [
        "warning: relay.networks[0] (0.0.0.0/0): open relay, acknowledged",
        "warning: backend[0].identity = \"none\"",
        "warning: trust.proxies[0] (10.0.0.0/8) is broad",
        "warning: listener[1].auth_plaintext (\"submission\" on 0.0.0.0:587)",
    ] {
        assert!(out.contains(warning), "{warning}\n{out}");
    }

    let never_alone = format!(
        "{BASE}authenticated = false\nnever = [\"10.66.0.0/16\"]\n[[backend]]\naddress = \"127.0.0.1:10025\"\n"
    );
    let (ok, out) = run(&["check", "--config", &config_file(&dir, &never_alone)]);
    assert!(
        ok && out.contains("warning: relay.never[0] (10.66.0.0/16): nothing else would let these clients relay"),
        "{out}"
    );
}

#[test]
fn explain_answers_from_the_config() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{BASE}networks = [\"10.0.0.0/8\"]\n[[backend]]\naddress = \"127.0.0.1:10025\"\nidentity = \"proxy-v1\"\n"
    );
    let path = config_file(&dir, &text);
    let (ok, out) = run(&[
        "explain",
        "--config",
        &path,
        "--client",
        "10.1.2.3:40000",
        "--listener",
        "mx",
        "--local",
        "192.0.2.25:25",
        "--rcpt",
        "u@example.com",
        "x@example.org",
        "a!b@example.com",
    ]);
    assert!(ok, "{out}");
    assert!(out.contains("connection: accepted by the listener's default (accept)"), "{out}");
    assert!(
        out.contains(
            "<x@example.org> (plain address, domain example.org): accepted: relaying allowed by relay.networks"
        ),
        "{out}"
    );
    assert!(out.contains("<a!b@example.com> (bang path: routed form"), "{out}");
    assert!(out.contains("PROXY TCP4 10.1.2.3 192.0.2.25 40000 25"), "{out}");

    let (ok, out) = run(&["explain", "--config", &path, "--client", "198.51.100.9", "--rcpt", "u@example.com"]);
    assert!(ok && out.contains("connection: REFUSED by rule 1 (\"bad-net\")"), "{out}");
    let (ok, out) =
        run(&["explain", "--config", &path, "--client", "10.1.2.3", "--listener", "nope", "--rcpt", "u@example.com"]);
    assert!(!ok && out.contains("no listener named \"nope\""), "{out}");
}

/// One run of `check` names every mistake: an unknown key (with its line), a bad rule
/// default and a /33 network, the semantic ones found after the key is taken out.
#[test]
fn check_lists_every_mistake_in_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = "[[listener]]\nname = \"mx\"\nbind = \"0.0.0.0:25\"\ndefault = \"maybe\"\nsizes = 3\n\
                [relay]\nlocal_domains = [\"example.com\"]\nnetworks = [\"10.0.0.0/33\"]\n\
                [[backend]]\naddress = \"127.0.0.1:10025\"\nidentity = \"xforward\"\n";
    let (ok, out) = run(&["check", "--config", &config_file(&dir, text)]);
    assert!(!ok, "{out}");
    assert!(out.contains("line 5") && out.contains("unknown field `sizes`"), "{out}");
    assert!(out.contains("listener[0].default") && out.contains("maybe"), "{out}");
    assert!(out.contains("relay.networks[0]") && out.contains("10.0.0.0/33"), "{out}");
}
