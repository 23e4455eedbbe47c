//! Transparent identity: the backend sees the client's own address as the TCP peer.
//! On loopback through Postfix, and with a public-looking client address across three
//! network namespaces (client, proxy, backend) using IP_TRANSPARENT.

use crate::support;

use std::process::Command;
use support::*;

#[test]
fn loopback_client_reaches_postfix_as_itself() {
    if !need(&["postfix", "swaks"]) {
        return;
    }
    init_logs();
    let pf = Postfix::shared();
    let proxy =
        Proxy::start(&Conf::new().listener("mx", "127.0.0.1:0", "").backend(pf.plain, "transparent", "").text());
    let mark = marker("transparent-loopback");
    let (ok, transcript) = swaks_from_77(proxy.addr("mx"), "u@example.com", &mark, &[]);
    assert!(ok, "{transcript}");
    let msg = pf.delivered(&mark);
    // No XCLIENT was sent: Postfix saw 127.0.0.77 as the TCP peer itself.
    assert_eq!(pf.logged_client(&msg.queue_id), "unknown[127.0.0.77]");
    assert!(pf.log().contains("connect from unknown[127.0.0.77]"));
}

/// The routing recipe of docs/deployment.md, in namespaces this test makes and removes.
#[test]
fn ip_transparent_across_namespaces() {
    if !need(&["ip", "smtp-sink", "swaks"]) {
        return;
    }
    if !nix_is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED: network namespaces need root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let bin = env!("CARGO_BIN_EXE_portcullis");
    let n = format!("pc{}", std::process::id() % 100000);
    let script = format!(
        r#"set -eu
N={n}; D={d}
cleanup() {{
  kill $(cat $D/*.pid 2>/dev/null) 2>/dev/null || true
  for ns in ${{N}}c ${{N}}p ${{N}}b; do ip netns del $ns 2>/dev/null || true; done
}}
trap cleanup EXIT
for ns in ${{N}}c ${{N}}p ${{N}}b; do ip netns add $ns; ip -n $ns link set lo up; done
ip link add ${{N}}c0 type veth peer name ${{N}}pc
ip link set ${{N}}c0 netns ${{N}}c; ip link set ${{N}}pc netns ${{N}}p
ip link add ${{N}}b0 type veth peer name ${{N}}pb
ip link set ${{N}}b0 netns ${{N}}b; ip link set ${{N}}pb netns ${{N}}p
ip -n ${{N}}c addr add 198.51.100.7/24 dev ${{N}}c0; ip -n ${{N}}c link set ${{N}}c0 up
ip -n ${{N}}c route add default via 198.51.100.1
ip -n ${{N}}p addr add 198.51.100.1/24 dev ${{N}}pc; ip -n ${{N}}p link set ${{N}}pc up
ip -n ${{N}}p addr add 10.99.0.1/24 dev ${{N}}pb; ip -n ${{N}}p link set ${{N}}pb up
ip -n ${{N}}b addr add 10.99.0.2/24 dev ${{N}}b0; ip -n ${{N}}b link set ${{N}}b0 up
ip -n ${{N}}b route add 198.51.100.0/24 via 10.99.0.1
# Replies from the backend to client addresses are delivered locally in the proxy.
ip -n ${{N}}p rule add iif ${{N}}pb lookup 100
ip -n ${{N}}p route add local 198.51.100.0/24 dev lo table 100

ip netns exec ${{N}}b smtp-sink -u root -C -d "$D/dump/%M." 10.99.0.2:2526 10 >/dev/null 2>&1 &
echo $! > $D/sink.pid
for i in $(seq 50); do
  ip netns exec ${{N}}p swaks --server 10.99.0.2:2526 --quit-after CONNECT >/dev/null 2>&1 && break
  sleep 0.2
done
cat > $D/p.toml <<CONF
[[listener]]
name = "mx"
bind = "198.51.100.1:2525"
[relay]
local_domains = ["example.com"]
[[backend]]
address = "10.99.0.2:2526"
identity = "transparent"
CONF
ip netns exec ${{N}}p {bin} run --config $D/p.toml 2>$D/portcullis.log &
echo $! > $D/portcullis.pid
for i in $(seq 50); do
  ip netns exec ${{N}}c swaks --server 198.51.100.1:2525 --quit-after CONNECT >/dev/null 2>&1 && break
  sleep 0.2
done
ip netns exec ${{N}}c swaks --server 198.51.100.1:2525 --from s@example.org --to u@example.com \
  --header "X-Test: namespaces"
sleep 0.5
cat $D/dump/*
"#
    );
    let out = Command::new("sh").arg("-c").arg(&script).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let log = std::fs::read_to_string(dir.path().join("portcullis.log")).unwrap_or_default();
    assert!(out.status.success(), "{stdout}\n{}\n{log}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("X-Client-Addr: 198.51.100.7\n"), "the backend must see the client:\n{stdout}\n{log}");
    assert!(stdout.contains("X-Test: namespaces"), "{stdout}");
}

fn nix_is_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}
