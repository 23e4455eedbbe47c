//! TLS and AUTH end to end: swaks as the client (STARTTLS, implicit TLS, AUTH PLAIN and
//! LOGIN), Postfix as the backend (STARTTLS toward it, XCLIENT inside TLS), and
//! pass-through AUTH checked by Dovecot behind Postfix.

use crate::support;

use support::*;

/// The proxy with a certificate, a users file (alice / wonderland) and one backend.
struct Setup {
    proxy: Proxy,
    _dir: tempfile::TempDir,
}

fn setup(listeners: &str, backend: &str, auth: &str, relay: &str) -> Setup {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let cert = TestCert::write(dir.path(), "proxy.test");
    let users = dir.path().join("users");
    let hash = portcullis::auth::users::hash_password("wonderland").unwrap();
    std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    let auth = auth.replace("{USERS}", &path_str(&users));
    let text = format!(
        r#"
[server]
hostname = "proxy.test"
{listeners}
[relay]
local_domains = ["example.com"]
{relay}
{backend}
[tls]
certificate = "{}"
private_key = "{}"
{auth}
"#,
        path_str(&cert.cert),
        path_str(&cert.key)
    );
    Setup { proxy: Proxy::start(&text), _dir: dir }
}

const LISTENERS: &str = r#"
[[listener]]
name = "submission"
bind = "127.0.0.1:0"
tls = "starttls"
auth = "optional"
[[listener]]
name = "smtps"
bind = "127.0.0.1:0"
tls = "implicit"
auth = "required"
"#;

const FILE_AUTH: &str = "[auth]\nmode = \"file\"\nusers_file = \"{USERS}\"\n";

fn xclient_backend(pf: &Postfix) -> String {
    format!("[[backend]]\naddress = \"{}\"\nidentity = \"xclient\"\n", pf.plain)
}

#[test]
fn starttls_and_auth_plain_deliver_with_the_real_client() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let pf = Postfix::shared();
    let s = setup(LISTENERS, &xclient_backend(pf), FILE_AUTH, "");
    let mark = marker("starttls-plain");
    let auth = ["--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wonderland"];
    let (ok, transcript) = swaks_from_77(s.proxy.addr("submission"), "u@example.com", &mark, &auth);
    assert!(ok, "{transcript}");
    assert!(transcript.contains("235 2.7.0"), "{transcript}");
    let msg = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&msg.queue_id), "unknown[127.0.0.77]");
}

#[test]
fn implicit_tls_and_auth_login() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let pf = Postfix::shared();
    let s = setup(LISTENERS, &xclient_backend(pf), FILE_AUTH, "");
    let mark = marker("implicit-login");
    let auth = ["--tlsc", "--auth", "LOGIN", "--auth-user", "alice", "--auth-password", "wonderland"];
    let (ok, transcript) = swaks_from_77(s.proxy.addr("smtps"), "u@example.com", &mark, &auth);
    assert!(ok, "{transcript}");
    pf.delivered(&mark);
}

#[test]
fn wrong_password_is_refused() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let pf = Postfix::shared();
    let s = setup(LISTENERS, &xclient_backend(pf), FILE_AUTH, "");
    for (tls, listener) in [("--tls", "submission"), ("--tlsc", "smtps")] {
        for mech in ["PLAIN", "LOGIN"] {
            let mark = marker(&format!("bad-{listener}-{mech}"));
            let auth = [tls, "--auth", mech, "--auth-user", "alice", "--auth-password", "queen-of-hearts"];
            let (ok, transcript) = swaks_from_77(s.proxy.addr(listener), "u@example.com", &mark, &auth);
            assert!(!ok, "{transcript}");
            assert!(transcript.contains("535 5.7.8"), "{transcript}");
        }
    }
}

#[test]
fn relay_needs_auth_and_never_still_wins() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let pf = Postfix::shared();
    let s = setup(LISTENERS, &xclient_backend(pf), FILE_AUTH, "never = [\"127.0.0.99/32\"]");
    let mark = marker("relay-auth");
    // Before AUTH: refused at RCPT.
    let (ok, transcript) = swaks_from_77(s.proxy.addr("submission"), "x@remote.test", &mark, &["--tls"]);
    assert!(!ok && transcript.contains("550 5.7.1"), "{transcript}");
    // After AUTH: relayed.
    let auth = ["--tls", "--auth", "PLAIN", "--auth-user", "alice", "--auth-password", "wonderland"];
    let (ok, transcript) = swaks_from_77(s.proxy.addr("submission"), "x@remote.test", &mark, &auth);
    assert!(ok, "{transcript}");
    pf.delivered(&mark);
    // A `never` client, even after AUTH: refused.
    let server = s.proxy.addr("submission").to_string();
    let (ok, transcript) = swaks(&[
        "--server",
        &server,
        "--local-interface",
        "127.0.0.99",
        "--from",
        "s@example.org",
        "--to",
        "x@remote.test",
        "--tls",
        "--auth",
        "PLAIN",
        "--auth-user",
        "alice",
        "--auth-password",
        "wonderland",
    ]);
    assert!(!ok && transcript.contains("235 2.7.0") && transcript.contains("550 5.7.1"), "{transcript}");
}

#[test]
fn starttls_toward_postfix_keeps_the_real_client() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    let pf = Postfix::shared();
    let backend = format!(
        "[[backend]]\naddress = \"{}\"\nidentity = \"xclient\"\ntls = \"starttls-required\"\n\
         ca_file = \"{}\"\ntls_server_name = \"localhost\"\n",
        pf.tls,
        path_str(&pf.cert)
    );
    let s = setup(LISTENERS, &backend, FILE_AUTH, "");
    let mark = marker("backend-tls");
    let (ok, transcript) = swaks_from_77(s.proxy.addr("submission"), "u@example.com", &mark, &[]);
    assert!(ok, "{transcript}");
    let msg = pf.delivered(&mark);
    assert_eq!(pf.logged_client(&msg.queue_id), "unknown[127.0.0.77]");
    assert!(msg.text.contains("with ESMTPS id"), "Received: shows ESMTP over TLS\n{}", msg.text);
    assert!(pf.log().contains("TLS connection established from localhost[127.0.0.1]"), "{}", pf.log());
}

#[test]
fn starttls_required_toward_a_backend_without_it_gives_4xx() {
    if !need(&["postfix"]) {
        return;
    }
    let pf = Postfix::shared();
    let backend = format!(
        "[[backend]]\naddress = \"{}\"\nidentity = \"xclient\"\ntls = \"starttls-required\"\ntls_verify = false\n",
        pf.plain
    );
    let s = setup(LISTENERS, &backend, FILE_AUTH, "");
    let mut c = Smtp::hello("127.0.0.77", s.proxy.addr("submission"));
    c.cmd("MAIL FROM:<s@example.org>", "451 4.4.1");
}

#[test]
fn auth_passed_through_to_a_backend_that_checks_it() {
    if !need(&["postfix", "swaks", "dovecot"]) {
        return;
    }
    let pf = Postfix::shared();
    pf.start_dovecot();
    let backend = format!("[[backend]]\naddress = \"{}\"\nidentity = \"xclient\"\n", pf.sasl);
    let s = setup(LISTENERS, &backend, "[auth]\nmode = \"backend\"\n", "");
    let mark = marker("backend-auth");
    for mech in ["PLAIN", "LOGIN"] {
        let auth = ["--tls", "--auth", mech, "--auth-user", "bob", "--auth-password", "builder"];
        let (ok, transcript) =
            swaks_from_77(s.proxy.addr("submission"), "x@remote.test", &format!("{mark}-{mech}"), &auth);
        assert!(ok, "{transcript}");
        pf.delivered(&format!("{mark}-{mech}"));
        let auth = ["--tls", "--auth", mech, "--auth-user", "bob", "--auth-password", "wrong"];
        let (ok, transcript) = swaks_from_77(s.proxy.addr("submission"), "u@example.com", &mark, &auth);
        assert!(!ok && transcript.contains("535"), "{transcript}");
    }
    let log = pf.log();
    assert!(log.contains("sasl_method=PLAIN, sasl_username=bob"), "{log}");
    assert!(log.contains("client=unknown[127.0.0.77], sasl_method=LOGIN, sasl_username=bob"), "{log}");
}
