//! deploy/systemd/portcullis.service: systemd's own checker has nothing to say about it, its
//! sandbox stays tight, and it keeps the contract the docs and the Dockerfile share
//! (the binary and config paths, SIGHUP reload, SIGTERM drain with time to finish).
//!
//! deploy/: the fleet examples. deploy/fleet (HAProxy in front of three instances
//! sharing Redis, Compose) is valid Compose and valid HAProxy, and its three files agree
//! on the addresses; deploy/kubernetes is valid against Kubernetes' own schemas
//! (kubernetes-validate, strict), keeps its contract with the image and the config, and
//! kustomization.yaml lists every manifest; both Portcullis configs check clean.

#[path = "e2e/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::process::Command;
use std::time::Duration;

const REPO: &str = env!("CARGO_MANIFEST_DIR");
const UNIT: &str = include_str!("../deploy/systemd/portcullis.service");

fn setting<'a>(key: &str) -> Vec<&'a str> {
    UNIT.lines().filter_map(|l| l.strip_prefix(key)?.strip_prefix('=')).collect()
}

#[test]
fn unit_keeps_its_contract() {
    assert_eq!(setting("ExecStart"), ["/usr/local/bin/portcullis run --config /etc/portcullis/portcullis.toml"]);
    assert_eq!(
        setting("ExecReload"),
        ["/usr/local/bin/portcullis check --config /etc/portcullis/portcullis.toml", "/bin/kill -HUP $MAINPID"]
    );
    assert_eq!(setting("KillSignal"), ["SIGTERM"]);
    assert_eq!(setting("User"), ["portcullis"]);
    // Longer than the default drain (server.drain_timeout = 30 s), or systemd kills
    // sessions that were still allowed to finish.
    let stop = setting("TimeoutStopSec");
    let secs: u64 = stop[0].trim_end_matches('s').parse().unwrap();
    assert!(secs > 30, "TimeoutStopSec={}", stop[0]);
    assert_eq!(setting("AmbientCapabilities"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(setting("CapabilityBoundingSet"), ["CAP_NET_BIND_SERVICE"]);
    assert_eq!(setting("RestrictAddressFamilies"), ["AF_INET AF_INET6 AF_UNIX"]);
    for key in ["NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "ProtectKernelTunables"] {
        assert_eq!(setting(key), ["yes"], "{key}");
    }
    assert_eq!(setting("ProtectSystem"), ["strict"]);
}

/// `systemd-analyze verify` on the unit, with ExecStart pointed at the binary cargo
/// built (verify insists that it exists): it must pass and say nothing about the unit.
#[test]
fn unit_verifies_clean() {
    if !support::have("systemd-analyze") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("portcullis.service");
    std::fs::write(&path, UNIT.replace("/usr/local/bin/portcullis", env!("CARGO_BIN_EXE_portcullis"))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let about_us: Vec<&str> = text.lines().filter(|l| l.contains("portcullis")).collect();
    assert!(out.status.success() && about_us.is_empty(), "systemd-analyze verify:\n{text}");

    // And the sandbox stays tight: systemd's own exposure score (0 = locked down,
    // 10 = none). 1.8 when this was written; above 2.5 something was taken away.
    let out = Command::new("systemd-analyze").args(["security", "--offline=yes"]).arg(&path).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    if text.contains("unrecognized option") {
        eprintln!("NOTE: this systemd-analyze has no security --offline (systemd < 250): exposure not checked");
        return;
    }
    let score: f64 = text
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for portcullis.service: "))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level:\n{text}"));
    assert!(score <= 2.5, "exposure {score}:\n{text}");
}

// === deploy/: the fleet examples ===

const FLEET_COMPOSE: &str = include_str!("../deploy/fleet/compose.yml");
const FLEET_HAPROXY: &str = include_str!("../deploy/fleet/haproxy.cfg");
const FLEET_CONFIG: &str = include_str!("../deploy/fleet/portcullis.toml");
const K8S: &str = "deploy/kubernetes";

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{REPO}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn output_text(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn duration(text: &str) -> Duration {
    humantime::parse_duration(text).unwrap_or_else(|e| panic!("{text:?}: {e}"))
}

/// A Portcullis config as a TOML table, for the values the files around it must agree with.
fn table(text: &str) -> toml::Table {
    text.parse().unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// The value at a dotted path ("listener.0.bind") of a TOML table.
fn get<'a>(t: &'a toml::Table, path: &str) -> &'a toml::Value {
    let mut parts = path.split('.');
    let mut v = t.get(parts.next().unwrap()).unwrap_or_else(|| panic!("no {path}"));
    for p in parts {
        v = match p.parse::<usize>() {
            Ok(i) => v.get(i),
            Err(_) => v.get(p),
        }
        .unwrap_or_else(|| panic!("no {path}"));
    }
    v
}

fn get_str<'a>(t: &'a toml::Table, path: &str) -> &'a str {
    get(t, path).as_str().unwrap_or_else(|| panic!("{path} is not a string"))
}

/// How to run Compose here: the v2 plugin if there is one, else docker-compose 1.x
/// (as in tests/docker.rs).
fn compose_command() -> Option<Vec<String>> {
    let plugin = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if plugin {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    support::have("docker-compose").then(|| vec!["docker-compose".into()])
}

/// The lines (trimmed, comments left out) of each service of a compose file.
fn compose_services(compose: &str) -> BTreeMap<String, Vec<String>> {
    let mut services: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let (mut in_services, mut current) = (false, None::<String>);
    for line in compose.lines() {
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            in_services = line == "services:";
            current = None;
            continue;
        }
        if !in_services {
            continue;
        }
        match line.strip_prefix("  ").and_then(|l| l.strip_suffix(':')) {
            Some(name) if !name.starts_with(' ') => {
                current = Some(name.to_string());
                services.entry(name.to_string()).or_default();
            }
            _ => {
                let name = current.clone().unwrap_or_else(|| panic!("a line outside any service: {line}"));
                services.get_mut(&name).unwrap().push(line.trim().to_string());
            }
        }
    }
    services
}

/// A YAML value without its trailing comment.
fn uncommented(value: &str) -> &str {
    value.split_once(" #").map_or(value, |(v, _)| v).trim()
}

/// The value of the first line `key: value` among `lines`.
fn value_of<'a>(lines: &'a [String], key: &str) -> Option<&'a str> {
    lines.iter().find_map(|l| l.strip_prefix(key)?.strip_prefix(':')).map(uncommented)
}

/// The address of a compose service (its ipv4_address).
fn address(services: &BTreeMap<String, Vec<String>>, service: &str) -> Ipv4Addr {
    let lines = services.get(service).unwrap_or_else(|| panic!("no service {service} in compose.yml"));
    let text = value_of(lines, "ipv4_address").unwrap_or_else(|| panic!("{service} has no ipv4_address"));
    text.parse().unwrap_or_else(|e| panic!("{service}: {text}: {e}"))
}

/// The lines of a YAML file that are not comments.
fn yaml_lines(yaml: &str) -> Vec<&str> {
    yaml.lines().filter(|l| !l.trim_start().starts_with('#')).collect()
}

/// Every value of `key:` in a YAML file, in order.
fn yaml_values<'a>(yaml: &'a str, key: &str) -> Vec<&'a str> {
    yaml_lines(yaml)
        .into_iter()
        .filter_map(|l| l.trim_start().trim_start_matches("- ").strip_prefix(key)?.strip_prefix(':'))
        .map(uncommented)
        .collect()
}

/// The value of the first `key:` after the first line starting (trimmed) with `marker`.
fn yaml_value_after<'a>(yaml: &'a str, marker: &str, key: &str) -> &'a str {
    let lines = yaml_lines(yaml);
    let at = lines
        .iter()
        .position(|l| l.trim_start().trim_start_matches("- ").starts_with(marker))
        .unwrap_or_else(|| panic!("no {marker:?} in:\n{yaml}"));
    lines[at + 1..]
        .iter()
        .copied()
        .find_map(|l| l.trim_start().trim_start_matches("- ").strip_prefix(key)?.strip_prefix(':'))
        .map(uncommented)
        .unwrap_or_else(|| panic!("no {key}: after {marker:?}"))
}

/// The text of a literal block scalar (`key: |`) of a YAML file, dedented.
fn block_scalar(yaml: &str, key: &str) -> String {
    fn indent(l: &str) -> usize {
        l.len() - l.trim_start().len()
    }
    let header = format!("{key}: |");
    let mut lines = yaml.lines().skip_while(|l| l.trim() != header);
    let key_indent = indent(lines.next().unwrap_or_else(|| panic!("no {header:?} in:\n{yaml}")));
    let body: Vec<&str> = lines.take_while(|l| l.trim().is_empty() || indent(l) > key_indent).collect();
    let n = body.iter().filter(|l| !l.trim().is_empty()).map(|l| indent(l)).min().unwrap_or(0);
    let mut text: String = body.iter().map(|l| format!("{}\n", l.get(n..).unwrap_or(""))).collect();
    text.truncate(text.trim_end().len());
    text + "\n"
}

/// portcullis.toml of the ConfigMap in deploy/kubernetes.
fn configmap_config() -> String {
    block_scalar(&read(&format!("{K8S}/configmap.yaml")), "portcullis.toml")
}

/// The manifests of deploy/kubernetes: every .yaml but kustomization.yaml, sorted.
fn manifests() -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(format!("{REPO}/{K8S}"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| (n.ends_with(".yaml") || n.ends_with(".yml")) && n != "kustomization.yaml")
        .collect();
    files.sort();
    files
}

/// The port of a `bind` address of a config.
fn port(bind: &str) -> u16 {
    bind.parse::<SocketAddr>().unwrap_or_else(|e| panic!("{bind}: {e}")).port()
}

/// Both configs are valid for this build: no errors, and no warnings but the one that
/// their admin endpoint, bound for the orchestrator's probes and scrapers, is open to
/// the pod or fleet network without a token. (They use [store], the shared Redis.)
#[test]
fn deployment_configs_check_clean() {
    let dir = tempfile::tempdir().unwrap();
    let k8s = dir.path().join("portcullis.toml");
    std::fs::write(&k8s, configmap_config()).unwrap();
    for path in [format!("{REPO}/deploy/fleet/portcullis.toml"), k8s.display().to_string()] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis")).args(["check", "--config", &path]).output().unwrap();
        let text = output_text(&out);
        let open_admin = "warning: admin.bind (0.0.0.0:9925) is reachable from other hosts";
        assert!(out.status.success() && text.contains("1 warning(s)") && text.contains(open_admin), "{path}:\n{text}");
    }
}

/// compose.yml, haproxy.cfg and portcullis.toml of deploy/fleet name the same addresses
/// and keep the fleet's contract: PROXY v2 from HAProxy only, HAProxy checking /readyz
/// on the admin port, XCLIENT believed from the instances only, a shared Redis, time to
/// drain.
#[test]
fn fleet_files_agree() {
    let config = table(FLEET_CONFIG);
    let services = compose_services(FLEET_COMPOSE);
    let at = |service: &str| address(&services, service);
    let subnet: ipnet::Ipv4Net = FLEET_COMPOSE
        .lines()
        .find_map(|l| l.trim().strip_prefix("- subnet:"))
        .expect("a fixed subnet")
        .trim()
        .parse()
        .unwrap();
    for service in services.keys() {
        assert!(subnet.contains(&at(service.as_str())), "{service} is outside {subnet}");
    }

    // Only HAProxy may send PROXY headers, and the listener expects them.
    assert_eq!(get(&config, "listener.0.proxy_protocol").as_bool(), Some(true));
    let proxies: Vec<&str> =
        get(&config, "trust.proxies").as_array().unwrap().iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(proxies, [format!("{}/32", at("haproxy"))], "trust.proxies");

    // HAProxy's servers are the three instances, on the listener's port, PROXY v2,
    // checked on /readyz of the admin port; least connections.
    let smtp_port = port(get_str(&config, "listener.0.bind"));
    let admin_port = port(get_str(&config, "admin.bind"));
    let servers: BTreeMap<&str, SocketAddr> = FLEET_HAPROXY
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .map(|l| {
            let mut words = l.split_whitespace();
            (words.next().unwrap(), words.next().unwrap().parse().unwrap())
        })
        .collect();
    let instances: Vec<&str> = services.keys().filter(|s| s.starts_with("portcullis-")).map(String::as_str).collect();
    assert_eq!(instances, ["portcullis-1", "portcullis-2", "portcullis-3"]);
    assert_eq!(servers.keys().copied().collect::<Vec<_>>(), instances, "haproxy.cfg servers");
    for (&name, &addr) in &servers {
        assert_eq!(addr, SocketAddr::from((at(name), smtp_port)), "haproxy.cfg server {name}");
        assert!(services[name].iter().any(|l| l == "<<: *portcullis"), "{name} is not the shared instance");
    }
    let default_server = FLEET_HAPROXY.lines().find(|l| l.trim().starts_with("default-server ")).unwrap();
    let check_port = format!("port {admin_port}");
    for word in ["send-proxy-v2", "check", check_port.as_str()] {
        assert!(default_server.contains(word), "default-server lacks {word}: {default_server}");
    }
    for line in ["mode tcp", "balance leastconn", "option httpchk", "http-check expect status 200"] {
        assert!(FLEET_HAPROXY.lines().any(|l| l.trim() == line), "haproxy.cfg lacks {line:?}");
    }
    assert!(FLEET_HAPROXY.contains("uri /readyz "), "haproxy.cfg checks something else than /readyz");
    let haproxy = &services["haproxy"];
    assert!(haproxy.iter().any(|l| l == "- ./haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"));
    assert!(haproxy.iter().any(|l| l == "- \"127.0.0.1:${FLEET_SMTP_PORT:-2525}:25\""), "published port");

    // Postfix believes XCLIENT from the three instances, and from nobody else.
    let xclient: Vec<&str> = value_of(&services["postfix"], "XCLIENT_HOSTS").unwrap().split_whitespace().collect();
    let expected: Vec<String> = instances.iter().map(|&i| at(i).to_string()).collect();
    assert_eq!(xclient, expected, "XCLIENT_HOSTS");
    assert_eq!(get_str(&config, "backend.0.identity"), "xclient");
    assert_eq!(get_str(&config, "backend.0.address"), "postfix:25");

    // The shared store is the redis service, without persistence.
    assert_eq!(get_str(&config, "store.redis"), "redis://redis:6379/0");
    assert_eq!(
        value_of(&services["redis"], "command"),
        Some(r#"["redis-server", "--appendonly", "no", "--save", ""]"#)
    );

    // The instances run the image's command on this directory, and get longer than
    // drain_timeout to stop.
    let drain = duration(get_str(&config, "server.drain_timeout"));
    assert!(FLEET_COMPOSE.contains("\n    dockerfile: deploy/docker/Dockerfile\n"));
    assert!(FLEET_COMPOSE.contains("\n    - .:/etc/portcullis:ro\n"));
    assert!(FLEET_COMPOSE.contains(r#"command: ["run", "--config", "/etc/portcullis/portcullis.toml"]"#));
    let grace: Vec<Duration> = FLEET_COMPOSE
        .lines()
        .filter_map(|l| l.trim().strip_prefix("stop_grace_period:"))
        .map(|v| duration(v.trim()))
        .collect();
    assert_eq!(grace.len(), 1, "one stop_grace_period, shared by the instances");
    assert!(grace[0] > drain, "stop_grace_period {grace:?} must be longer than drain_timeout {drain:?}");
}

/// `compose config -q` on deploy/fleet/compose.yml: valid Compose, nothing to warn about.
#[test]
fn fleet_compose_is_valid() {
    let Some(compose) = compose_command() else { return };
    let out = Command::new(&compose[0])
        .args(&compose[1..])
        .args(["-f", "deploy/fleet/compose.yml", "config", "-q"])
        .current_dir(REPO)
        .output()
        .unwrap();
    let text = output_text(&out);
    let warned = text.to_ascii_lowercase().contains("warn");
    assert!(out.status.success() && !warned, "{} config -q:\n{text}", compose.join(" "));
}

/// HAProxy's own check of deploy/fleet/haproxy.cfg: valid, no warnings.
#[test]
fn fleet_haproxy_cfg_is_valid() {
    if !support::have("haproxy") {
        return;
    }
    let out = Command::new("haproxy").args(["-c", "-f", &format!("{REPO}/deploy/fleet/haproxy.cfg")]).output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success() && !text.contains("[WARNING]"), "haproxy -c:\n{text}");
}

/// Every manifest of deploy/kubernetes against Kubernetes' own schemas, strictly (an
/// unknown or misspelt field is an error), for 1.30 (the oldest the manifests are for:
/// the preStop sleep action) and the newest the validator knows. A resource it has no
/// schema for (a wrong apiVersion or kind) is a failure too.
#[test]
fn kubernetes_manifests_validate() {
    if !support::have_python_module("kubernetes_validate") {
        return;
    }
    let files = manifests();
    for version in [Some("1.30.0"), None] {
        let mut cmd = Command::new("python3");
        cmd.args(["-m", "kubernetes_validate", "--strict"]).current_dir(format!("{REPO}/{K8S}"));
        if let Some(v) = version {
            cmd.args(["-k", v]);
        }
        let out = cmd.args(&files).output().unwrap();
        let text = output_text(&out);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let not_passed: Vec<&str> =
            stdout.lines().filter(|l| !(l.starts_with("INFO ") && l.contains(" passed for resource "))).collect();
        let what = format!("kubernetes-validate --strict -k {}", version.unwrap_or("(newest)"));
        assert!(out.status.success() && not_passed.is_empty(), "{what}:\n{text}");
        for f in &files {
            assert!(
                stdout.lines().any(|l| l.starts_with(&format!("INFO {f} passed"))),
                "{what}: {f} not checked:\n{text}"
            );
        }
    }
}

/// kustomization.yaml lists every manifest and nothing else; where kubectl is
/// installed, `kubectl kustomize` builds it into all their resources.
#[test]
fn kustomization_lists_every_manifest() {
    let kustomization = read(&format!("{K8S}/kustomization.yaml"));
    let mut listed: Vec<String> = kustomization
        .lines()
        .skip_while(|l| l.trim() != "resources:")
        .skip(1)
        .map_while(|l| l.trim().strip_prefix("- ").map(|s| s.trim().to_string()))
        .collect();
    listed.sort();
    assert_eq!(listed, manifests(), "kustomization.yaml resources");

    let kubectl = Command::new("kubectl").args(["version", "--client"]).output().is_ok_and(|o| o.status.success());
    if !kubectl {
        eprintln!("NOTE: kubectl is not installed: kustomization.yaml not built (kubectl kustomize)");
        return;
    }
    let out = Command::new("kubectl").args(["kustomize", &format!("{REPO}/{K8S}")]).output().unwrap();
    let text = output_text(&out);
    assert!(out.status.success(), "kubectl kustomize:\n{text}");
    let kinds = |yaml: &str| {
        let mut k: Vec<String> = yaml.lines().filter(|l| l.starts_with("kind: ")).map(String::from).collect();
        k.sort();
        k
    };
    let mut expected: Vec<String> = manifests().iter().flat_map(|f| kinds(&read(&format!("{K8S}/{f}")))).collect();
    expected.sort();
    assert_eq!(kinds(&String::from_utf8_lossy(&out.stdout)), expected, "kubectl kustomize:\n{text}");
}

/// deploy/kubernetes keeps its contract with the image and with its config: the image's
/// user, command, config path and ports; probes on /readyz and /healthz; time to drain;
/// the real client address (externalTrafficPolicy: Local, so no PROXY header); one pod
/// at a time disrupted; the store where Redis is.
#[test]
fn kubernetes_manifests_keep_their_contract() {
    let config = table(&configmap_config());
    let deployment = read(&format!("{K8S}/deployment.yaml"));
    let d = deployment.as_str();

    assert_eq!(yaml_values(d, "replicas"), ["3"]);
    assert_eq!(yaml_values(d, "args"), [r#"["run", "--config", "/etc/portcullis/portcullis.toml"]"#]);
    assert_eq!(yaml_value_after(d, "volumeMounts:", "mountPath"), "/etc/portcullis");
    assert_eq!(yaml_value_after(d, "configMap:", "name"), "portcullis");
    // Ports: the listener's and the admin endpoint's, by name.
    assert_eq!(
        yaml_value_after(d, "name: smtp", "containerPort"),
        port(get_str(&config, "listener.0.bind")).to_string()
    );
    assert_eq!(yaml_value_after(d, "name: admin", "containerPort"), port(get_str(&config, "admin.bind")).to_string());
    assert_eq!(yaml_value_after(d, "readinessProbe:", "path"), "/readyz");
    assert_eq!(yaml_value_after(d, "readinessProbe:", "port"), "admin");
    assert_eq!(yaml_value_after(d, "livenessProbe:", "path"), "/healthz");
    assert_eq!(yaml_value_after(d, "livenessProbe:", "port"), "admin");
    // The image's user, locked down.
    assert_eq!(yaml_values(d, "runAsNonRoot"), ["true"]);
    assert_eq!(yaml_values(d, "runAsUser"), ["10025"]);
    assert_eq!(yaml_values(d, "readOnlyRootFilesystem"), ["true"]);
    assert_eq!(yaml_values(d, "allowPrivilegeEscalation"), ["false"]);
    assert_eq!(yaml_values(d, "drop"), [r#"["ALL"]"#]);
    assert_eq!(yaml_values(d, "add"), [r#"["NET_BIND_SERVICE"]"#]);
    assert!(!yaml_values(d, "resources").is_empty() && !yaml_values(d, "memory").is_empty(), "resources");
    assert!(
        !yaml_values(d, "topologySpreadConstraints").is_empty() || !yaml_values(d, "podAntiAffinity").is_empty(),
        "spread"
    );
    // SIGKILL only after the preStop sleep and the whole drain_timeout.
    let drain = duration(get_str(&config, "server.drain_timeout"));
    let pre_stop: u64 = yaml_value_after(d, "preStop:", "seconds").parse().unwrap();
    let grace: u64 = yaml_values(d, "terminationGracePeriodSeconds")[0].parse().unwrap();
    assert!(
        Duration::from_secs(grace) > drain + Duration::from_secs(pre_stop),
        "terminationGracePeriodSeconds {grace} must exceed preStop {pre_stop}s + drain_timeout {drain:?}"
    );

    // The client's own address reaches the pods: no PROXY header is expected.
    let service = read(&format!("{K8S}/service.yaml"));
    assert_eq!(yaml_values(&service, "type"), ["LoadBalancer"]);
    assert_eq!(yaml_values(&service, "externalTrafficPolicy"), ["Local"]);
    assert_eq!(yaml_values(&service, "targetPort"), ["smtp"]);
    let proxy_protocol = get(&config, "listener.0").get("proxy_protocol").and_then(|v| v.as_bool());
    assert!(!proxy_protocol.unwrap_or(false), "proxy_protocol with externalTrafficPolicy: Local");
    let admin = read(&format!("{K8S}/service-admin.yaml"));
    assert_eq!(yaml_values(&admin, "type"), ["ClusterIP"]);
    assert_eq!(yaml_values(&admin, "targetPort"), ["admin"]);

    let pdb = read(&format!("{K8S}/pdb.yaml"));
    let budget = (yaml_values(&pdb, "maxUnavailable"), yaml_values(&pdb, "minAvailable"));
    assert!(budget.0 == ["1"] || budget.1 == ["2"], "PodDisruptionBudget: {budget:?}");

    // [store] redis is the Service of redis.yaml, which keeps nothing on disk.
    let redis = read(&format!("{K8S}/redis.yaml"));
    assert_eq!(get_str(&config, "store.redis"), "redis://redis:6379/0");
    assert_eq!(yaml_value_after(&redis, "kind: Service", "name"), "redis");
    assert_eq!(yaml_value_after(&redis, "kind: Service", "port"), "6379");
    assert_eq!(yaml_values(&redis, "args"), [r#"["redis-server", "--appendonly", "no", "--save", ""]"#]);
}
