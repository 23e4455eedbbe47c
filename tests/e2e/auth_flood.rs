//! A crowd of wrong AUTH attempts at once: password checks are bounded, the excess
//! is told to try later (454 4.7.0), and the process memory stays small during the
//! flood and comes back after it. The proxy runs as a process of its own, so that its
//! resident memory is what is measured.

use crate::support;

use std::time::Duration;
use support::*;

/// Resident and peak resident memory of process `pid`, in MiB.
fn memory(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        let line = status.lines().find(|l| l.starts_with(name)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap() / 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn sixty_wrong_passwords_at_once_stay_bounded() {
    init_logs();
    let dir = tempfile::tempdir().unwrap();
    let hash = portcullis::auth::users::hash_password("right").unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("alice:{hash}\n")).unwrap();
    let conf = Conf::new()
        .listener("sub", "127.0.0.1:0", "auth = \"optional\"\nauth_plaintext = true")
        .backend("127.0.0.1:9", "none", "")
        .set("auth", &format!("mode = \"file\"\nusers_file = \"{}\"", users.display()));
    let proxy = Spawned::start(&conf.text());
    let (addr, pid) = (proxy.mx, proxy.child.id());
    // Warm up: one check, so the verifier exists before the baseline is read.
    let mut c = Smtp::hello("127.0.0.60", addr);
    c.cmd(&format!("AUTH PLAIN {}", plain("alice", "wrong")), "535 5.7.8");
    drop(c);
    let (before, _) = memory(pid);

    let wrong = plain("alice", "wrong");
    let mut clients: Vec<Smtp> = (0..60).map(|i| Smtp::hello(&format!("127.0.0.{}", 61 + i / 20), addr)).collect();
    for c in &mut clients {
        c.send(&format!("AUTH PLAIN {wrong}\r\n"));
    }
    let replies: Vec<String> = clients.iter_mut().map(|c| c.reply()).collect();
    let (during, peak) = memory(pid);
    drop(clients);
    std::thread::sleep(Duration::from_secs(1));
    let (after, _) = memory(pid);
    eprintln!("resident MiB: before {before}, during {during}, peak {peak}, after {after}");

    let refused = replies.iter().filter(|r| r.starts_with("535 5.7.8")).count();
    let busy = replies.iter().filter(|r| r.starts_with("454 4.7.0")).count();
    assert_eq!(refused + busy, 60, "{replies:?}");
    assert!(refused >= 1, "some checks must run: {replies:?}");
    // One check is about 19 MiB; there is one verifier thread per core (at most 8).
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8) as u64;
    let bound = threads * 20 + 40;
    assert!(peak < before + bound, "peak {peak} MiB, from {before} MiB");
    assert!(after < before + bound, "after {after} MiB, from {before} MiB");
}

fn plain(user: &str, pass: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{pass}"))
}
