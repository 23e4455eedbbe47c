//! The container image and the compose stacks of docker/, for real, against the
//! machine's Docker Engine and with no container registry:
//!
//! - the quick start's `up -d --build || down` failing (base images that do not exist)
//!   leaves no container or network behind;
//! - base images made by deploy/docker/base-images.sh (debootstrap + docker import); a second
//!   run keeps them (same image IDs), so a second build comes whole from the cache, and a
//!   changed input makes a new image;
//! - the image built from deploy/docker/Dockerfile itself, only the FROM images named; its size
//!   and the binary's as deploy/docker/README.md states them;
//! - deploy/docker/compose.yml up until Portcullis is healthy; mail from a client container on
//!   the stack's network through Portcullis to Postfix, which must log and stamp the
//!   client's address, not Portcullis'; a relay attempt refused with 550 5.7.1; Postfix
//!   refusing XCLIENT from anyone but Portcullis; the published ports and /metrics;
//!   SIGHUP and SIGTERM reaching Portcullis as PID 1; nothing left after `down`;
//! - deploy/docker/compose.transparent.yml: Portcullis (identity = "transparent") in front of
//!   clamsmtpd + clamd in front of Postfix: Postfix logs the client, the scanner stamps
//!   the message, EICAR is discarded by the scanner;
//! - every container and image the test made removed at the end, also when it fails.
//!
//! Needs root (debootstrap), a running Docker Engine, `docker compose` or
//! `docker-compose`, debootstrap, and deb.debian.org (the first run; later runs reuse the
//! trees in target/docker-base). About 6 minutes (8 from nothing), most of it the release
//! build inside `docker build`; each step's time is printed (`-- --nocapture`).

#[path = "e2e/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const REPO: &str = env!("CARGO_MANIFEST_DIR");
/// Marks every image this test makes (base images by `--label`; images built FROM them
/// and containers inherit it); the value is "HOST/PID/PREFIX" of the run.
const RUN_LABEL: &str = "portcullis.test.run";

/// `ok`, or (like `support::have`) a failure under CI and a visible skip elsewhere.
fn need(ok: bool, what: &str) -> bool {
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("{what} is required under CI");
        }
        eprintln!("SKIPPED: {what} is not available (run under CI=1 to make this a failure)");
    }
    ok
}

/// How to run Compose here: the v2 plugin if there is one, else docker-compose 1.x.
fn compose_command() -> Option<Vec<String>> {
    let plugin = Command::new("docker").args(["compose", "version"]).output().is_ok_and(|o| o.status.success());
    if plugin {
        return Some(vec!["docker".into(), "compose".into()]);
    }
    support::have("docker-compose").then(|| vec!["docker-compose".into()])
}

// === running commands ===

struct Ran {
    ok: bool,
    status: String,
    stdout: String,
    stderr: String,
}

impl Ran {
    fn all(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs `cmd` to its end, at most `limit` (then it is killed and the test fails).
fn run(cmd: &mut Command, limit: Duration) -> Ran {
    let line = format!("{cmd:?}");
    let (out, err) = (tempfile::tempfile().unwrap(), tempfile::tempfile().unwrap());
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(err.try_clone().unwrap())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {line}: {e}"));
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{line} did not finish in {limit:?}\n{}", tails(&read(out), &read(err)));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    Ran { ok: status.success(), status: status.to_string(), stdout: read(out), stderr: read(err) }
}

fn read(mut file: std::fs::File) -> String {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    file.seek(std::io::SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut bytes).unwrap();
    String::from_utf8_lossy(&bytes).into_owned()
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn tails(stdout: &str, stderr: &str) -> String {
    format!("--- stderr (end) ---\n{}\n--- stdout (end) ---\n{}", tail(stderr, 40), tail(stdout, 40))
}

/// Runs `cmd`; a failure panics with `what`, the command and the end of its output.
fn must(cmd: &mut Command, what: &str, limit: Duration) -> Ran {
    let line = format!("{cmd:?}");
    let ran = run(cmd, limit);
    assert!(ran.ok, "{what} failed ({}): {line}\n{}", ran.status, tails(&ran.stdout, &ran.stderr));
    ran
}

fn docker(args: &[&str]) -> Command {
    let mut cmd = Command::new("docker");
    cmd.args(args);
    cmd
}

/// `docker ARGS` that must succeed (within a minute); its standard output, trimmed.
fn docker_out(args: &[&str]) -> String {
    must(&mut docker(args), &format!("docker {}", args.join(" ")), Duration::from_secs(60)).stdout.trim().to_string()
}

/// The lines of `docker ARGS` output, or none if it fails (for clean-up).
fn docker_lines(args: &[&str]) -> Vec<String> {
    docker(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).filter(|l| !l.is_empty()).collect())
        .unwrap_or_default()
}

/// Runs `step`, printing and recording how long it took.
fn timed<T>(timings: &mut Vec<(&'static str, Duration)>, name: &'static str, step: impl FnOnce() -> T) -> T {
    eprintln!("docker test: {name} ...");
    let start = Instant::now();
    let value = step();
    let took = start.elapsed();
    eprintln!("docker test: {name}: {took:.1?}");
    timings.push((name, took));
    value
}

// === clean-up ===

/// Every container and image of this run; dropping it (also when the test panics)
/// removes them all.
struct Made {
    label: String,
}

impl Drop for Made {
    fn drop(&mut self) {
        remove_labeled(&self.label);
    }
}

/// Removes every container and image (tagged or not) carrying `label` (containers
/// inherit their image's labels: this takes the classic builder's container of a failed
/// step too); images children before parents, so a few rounds.
fn remove_labeled(label: &str) {
    for c in docker_lines(&["ps", "-a", "-q", "--filter", &format!("label={label}")]) {
        let _ = docker(&["rm", "-f", &c]).output();
    }
    let list = || -> BTreeSet<String> {
        docker_lines(&["images", "-a", "-q", "--no-trunc", "--filter", &format!("label={label}")]).into_iter().collect()
    };
    let mut left = list();
    for _ in 0..30 {
        if left.is_empty() {
            return;
        }
        for id in &left {
            let _ = docker(&["rmi", "-f", id]).output();
        }
        let now = list();
        if now == left {
            break;
        }
        left = now;
    }
    if !left.is_empty() {
        eprintln!("docker test: WARNING: images with {label} could not be removed: {left:?}");
    }
}

/// This machine's name: runs are told apart by host and process (a Docker Engine may be
/// shared by several machines or containers).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default().trim().to_string()
}

/// Removes what earlier runs of this test left when they were killed before their
/// clean-up ran: runs on this host whose process is gone.
fn remove_stale_runs() {
    let ids = docker_lines(&["images", "-a", "-q", "--filter", &format!("label={RUN_LABEL}")]);
    if ids.is_empty() {
        return;
    }
    let format = format!("{{{{index .Config.Labels \"{RUN_LABEL}\"}}}}");
    let mut inspect = vec!["image", "inspect", "-f", &format];
    inspect.extend(ids.iter().map(String::as_str));
    let runs: BTreeSet<String> = docker_lines(&inspect).into_iter().collect();
    for run in runs {
        let [host, pid, prefix] = run.splitn(3, '/').collect::<Vec<_>>()[..] else { continue };
        if host != hostname() || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        eprintln!("docker test: removing what a killed run ({run}) left");
        remove_labeled(&format!("{RUN_LABEL}={run}"));
        for project in [prefix.to_string(), format!("{prefix}-transparent"), format!("{prefix}-failed")] {
            let label = format!("label=com.docker.compose.project={project}");
            for n in docker_lines(&["network", "ls", "-q", "--filter", &label]) {
                let _ = docker(&["network", "rm", &n]).output();
            }
        }
    }
}

// === a compose project ===

/// One compose project of this test; dropping it takes it down and removes what is
/// left of it.
struct Stack {
    compose: Vec<String>,
    file: &'static str,
    project: String,
    env: Vec<(String, String)>,
}

impl Stack {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.compose[0]);
        cmd.args(&self.compose[1..]).args(["-p", &self.project, "-f", &format!("{REPO}/deploy/docker/{}", self.file)]);
        cmd.args(args).envs(self.env.iter().map(|(k, v)| (k, v)));
        cmd
    }

    fn must(&self, args: &[&str], what: &str, limit: Duration) -> Ran {
        must(&mut self.cmd(args), what, limit)
    }

    /// `compose config` with no variables set (neither in the environment nor by a
    /// deploy/docker/.env that base-images.sh wrote for the quick start): the file as shipped is
    /// valid, and its output holds `expected`.
    fn check_defaults(&self, expected: &[&str]) {
        let empty = tempfile::NamedTempFile::new().unwrap();
        let mut config = Command::new(&self.compose[0]);
        config.args(&self.compose[1..]).arg("--env-file").arg(empty.path());
        config.args(["-p", &self.project, "-f", &format!("{REPO}/deploy/docker/{}", self.file), "config"]);
        for (var, _) in &self.env {
            config.env_remove(var);
        }
        let text = must(&mut config, &format!("compose config of {}", self.file), Duration::from_secs(60)).stdout;
        for e in expected {
            assert!(text.contains(e), "compose config of {} lacks {e}:\n{text}", self.file);
        }
    }

    /// The id of a service's container (running or not).
    fn container(&self, service: &str) -> String {
        let ids = docker_lines(&[
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=com.docker.compose.project={}", self.project),
            "--filter",
            &format!("label=com.docker.compose.service={service}"),
        ]);
        assert!(ids.len() == 1, "service {service}: containers {ids:?}");
        ids[0].clone()
    }

    /// Runs the client service (swaks to portcullis:25) with `args`.
    fn swaks(&self, args: &[&str]) -> Ran {
        let mut all = vec!["run", "--rm", "-T"];
        all.extend_from_slice(args);
        run(&mut self.cmd(&all), Duration::from_secs(180))
    }

    /// `down -v`, then: nothing of the project is left.
    fn down(&self) {
        self.must(&["down", "-v", "--remove-orphans"], "compose down", Duration::from_secs(120));
        let left = self.leftovers();
        assert!(left.is_empty(), "left after down: {left:?}");
    }

    /// Everything of the project that Docker still has: containers, networks, volumes.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-a", "-q", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            left.extend(docker_lines(&args).into_iter().map(|id| format!("{kind} {id}")));
        }
        left
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        let _ = run(&mut self.cmd(&["down", "-v", "--remove-orphans", "-t", "5"]), Duration::from_secs(120));
        for thing in self.leftovers() {
            let (kind, id) = thing.split_once(' ').unwrap();
            let _ = docker(&[kind, "rm", "-f", id]).output();
            let _ = docker(&[kind, "rm", id]).output(); // networks and volumes take no -f on old engines
        }
    }
}

// === helpers on a running stack ===

/// Waits until the container's health check says healthy; fails at once when it says
/// unhealthy or the container stops.
fn wait_healthy(container: &str, limit: Duration) {
    let start = Instant::now();
    loop {
        let state = docker_out(&[
            "inspect",
            "-f",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}no-healthcheck{{end}}",
            container,
        ]);
        if state == "running healthy" {
            return;
        }
        let broken = !state.starts_with("running") || state.ends_with("unhealthy") || state.ends_with("no-healthcheck");
        if broken || start.elapsed() > limit {
            let health = docker(&["inspect", "-f", "{{json .State.Health}}", container]).output().unwrap();
            panic!(
                "portcullis is not healthy after {:.1?}: {state}\n--- health ---\n{}\n--- logs ---\n{}",
                start.elapsed(),
                String::from_utf8_lossy(&health.stdout),
                tail(&logs(container), 40)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A container's log (standard output and error).
fn logs(container: &str) -> String {
    must(&mut docker(&["logs", container]), "docker logs", Duration::from_secs(60)).all()
}

/// Waits until a log line of `container` contains `needle`; returns that line.
fn wait_log_line(container: &str, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = logs(container);
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        if start.elapsed() > limit {
            panic!("no log line with {needle:?} from {container} in {limit:?}; the log:\n{}", tail(&text, 60));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The queue id in "<-  250 2.0.0 Ok: queued as ID" of a swaks transcript.
fn queue_id(transcript: &str) -> String {
    transcript
        .lines()
        .find_map(|l| l.split_once("<-  250 2.0.0 Ok: queued as ").map(|(_, id)| id.trim().to_string()))
        .unwrap_or_else(|| panic!("no 250 queued as in the transcript:\n{transcript}"))
}

/// The message delivered into Postfix's Maildir that contains `marker`, if any.
fn delivered(postfix: &str, marker: &str) -> Option<String> {
    let script = format!("f=$(grep -l -- '{marker}' /var/mail/vhosts/example.com/new/* 2>/dev/null) && cat $f");
    let ran = run(&mut docker(&["exec", postfix, "sh", "-c", &script]), Duration::from_secs(60));
    ran.ok.then_some(ran.stdout)
}

/// Postfix logged the message `queue_id` as from `client` ("unknown[10.1.2.3]") and
/// delivered it; returns the delivered text (found by `marker`).
fn check_delivery(postfix: &str, queue_id: &str, client: &str, marker: &str) -> String {
    let line = wait_log_line(postfix, &format!("{queue_id}: client="), Duration::from_secs(30));
    assert!(line.contains(&format!("client={client}")), "Postfix should log the client as {client}: {line}");
    wait_log_line(postfix, &format!("{queue_id}: to=<user@example.com>, relay=virtual"), Duration::from_secs(30));
    let text = delivered(postfix, marker).unwrap_or_else(|| panic!("no delivered message holds {marker}"));
    let address = client.split_once('[').map_or(client, |(_, a)| a);
    let received = text.lines().find(|l| l.starts_with("Received: from")).unwrap_or_default();
    assert!(received.contains(&format!("[{address}")), "Received: should name {client}:\n{text}");
    text
}

/// The value of a Prometheus sample: the lines starting with `name{` that hold `label`.
fn sample(metrics: &str, name: &str, label: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The number (MB) right after `before` in `text` (whitespace as one space).
fn stated_mb(text: &str, before: &str) -> f64 {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let at = text.find(before).unwrap_or_else(|| panic!("deploy/docker/README.md lacks {before:?}")) + before.len();
    let number: String = text[at..].chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    number.parse().unwrap_or_else(|_| panic!("no number after {before:?} in deploy/docker/README.md"))
}

/// The quick start's `up -d --build || down` (as deploy/docker/README.md gives it), with base
/// images that exist nowhere, so that the build fails (no registry, or no such image in
/// it): `up` fails, and after `down` no container or network of the project is left.
fn failed_start(compose: &[String], prefix: &str, net: &str) {
    let readme = std::fs::read_to_string(format!("{REPO}/deploy/docker/README.md")).unwrap();
    let quick =
        "docker compose -f deploy/docker/compose.yml up -d --build || docker compose -f deploy/docker/compose.yml down";
    assert!(readme.contains(quick), "deploy/docker/README.md's quick start lacks {quick:?}");
    let missing = format!("{prefix}/missing:none");
    let set = |k: &str, v: &str| (k.to_string(), v.to_string());
    let stack = Stack {
        compose: compose.to_vec(),
        file: "compose.yml",
        project: format!("{prefix}-failed"),
        env: vec![
            set("RUST_IMAGE", &missing),
            set("RUNTIME_IMAGE", &missing),
            set("MAIL_IMAGE", &missing),
            set("PORTCULLIS_IMAGE", &format!("{prefix}/portcullis:failed")),
            set("POSTFIX_IMAGE", &format!("{prefix}/postfix:failed")),
            set("PORTCULLIS_NET", net),
            set("PORTCULLIS_SMTP_PORT", &support::free_port().to_string()),
            set("PORTCULLIS_ADMIN_PORT", &support::free_port().to_string()),
        ],
    };
    let up = run(&mut stack.cmd(&["up", "-d", "--build"]), Duration::from_secs(300));
    assert!(!up.ok, "up with base images that do not exist succeeded:\n{}", up.all());
    eprintln!("docker test: the failed up left {:?}; then down", stack.leftovers());
    stack.must(&["down"], "compose down after a failed up", Duration::from_secs(120));
    let left = stack.leftovers();
    assert!(left.is_empty(), "left after a failed up and down: {left:?}");
    for image in [format!("{prefix}/portcullis:failed"), format!("{prefix}/postfix:failed")] {
        let ids = docker_lines(&["images", "-q", &image]);
        assert!(ids.is_empty(), "a failed up made the image {image}: {ids:?}");
    }
}

// === the tests ===

/// The configs shipped in docker/ (the image's default and the stacks') are valid for
/// this build: no errors, no warnings but, in the stacks, that the admin endpoint is
/// open to the Compose network (published on the host's loopback only) without a token.
#[test]
fn shipped_configs_check_clean() {
    for file in [
        "deploy/docker/portcullis.example.toml",
        "deploy/docker/config/portcullis.compose.toml",
        "deploy/docker/config/portcullis.transparent.toml",
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .args(["check", "--config", &format!("{REPO}/{file}")])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        let open_admin = "warning: admin.bind (0.0.0.0:9925) is reachable from other hosts";
        let clean = if file.contains("example") {
            text.contains("0 warning(s)")
        } else {
            text.contains("1 warning(s)") && text.contains(open_admin)
        };
        assert!(out.status.success() && clean, "{file}:\n{text}");
    }
}

#[test]
fn image_and_compose_stacks() {
    let total = Instant::now();
    let is_root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.trim_ascii() == b"0");
    if !need(is_root, "root (debootstrap makes the base images)")
        || !support::have("docker")
        || !need(docker(&["info"]).output().is_ok_and(|o| o.status.success()), "a running Docker Engine (docker info)")
        || !support::have("debootstrap")
    {
        return;
    }
    let Some(compose) = compose_command() else { return };
    remove_stale_runs();

    let pid = std::process::id();
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    // The compose projects' name, and the prefix of every image name.
    let prefix = format!("portcullis-test-{pid}-{:04x}", nanos & 0xffff);
    let run_id = format!("{}/{pid}/{prefix}", hostname());
    let _made = Made { label: format!("{RUN_LABEL}={run_id}") };
    let mut timings = Vec::new();
    let net = format!("10.152.{}", 26 + pid % 200);

    // 0. The quick start's first command, failing: a failed start leaves nothing behind.
    timed(&mut timings, "a failed start (up || down)", || failed_start(&compose, &prefix, &net));

    // 1. Base images, without a registry.
    let base_images = |extra: &[&str]| -> Ran {
        let mut cmd = Command::new(format!("{REPO}/deploy/docker/base-images.sh"));
        cmd.args(["--prefix", &prefix, "--label", &format!("{RUN_LABEL}={run_id}")]).args(extra);
        let ran = must(&mut cmd, "deploy/docker/base-images.sh", Duration::from_secs(900));
        ran.stderr.lines().for_each(|l| eprintln!("    {l}"));
        ran
    };
    let made = timed(&mut timings, "base images (deploy/docker/base-images.sh)", || base_images(&[]).stdout);
    let image_of = |var: &str| -> String {
        made.lines()
            .find_map(|l| l.strip_prefix(&format!("{var}=")))
            .unwrap_or_else(|| panic!("base-images.sh printed no {var}=:\n{made}"))
            .to_string()
    };
    let (rust_image, runtime_image) = (image_of("RUST_IMAGE"), image_of("RUNTIME_IMAGE"));

    // 2. The image, from deploy/docker/Dockerfile as a user builds it (only the FROM images named).
    let image = format!("{prefix}/portcullis:test");
    let build = || {
        let (rust, runtime) = (format!("RUST_IMAGE={rust_image}"), format!("RUNTIME_IMAGE={runtime_image}"));
        let dockerfile = format!("{REPO}/deploy/docker/Dockerfile");
        let args = ["build", "-f", &dockerfile, "--build-arg", &rust, "--build-arg", &runtime, "-t", &image, REPO];
        must(&mut docker(&args), "docker build", Duration::from_secs(1500));
        docker_out(&["image", "inspect", "-f", "{{.Id}}", &image])
    };
    let built = timed(&mut timings, "docker build -f deploy/docker/Dockerfile", build);

    // base-images.sh again, nothing changed: every image kept as it is (no new image
    // IDs), and so a second build is the same image, every step from the cache.
    let base_names: Vec<String> = made.lines().filter_map(|l| Some(l.split_once('=')?.1.to_string())).collect();
    assert_eq!(base_names.len(), 4, "{made}");
    let ids = |names: &[String]| -> Vec<String> {
        names.iter().map(|n| docker_out(&["image", "inspect", "-f", "{{.Id}}", n])).collect()
    };
    let base_ids = ids(&base_names);
    let again = timed(&mut timings, "base images again (all kept)", || base_images(&[]));
    assert_eq!(again.stdout, made, "base-images.sh printed other images");
    assert_eq!(ids(&base_names), base_ids, "base-images.sh made new images though nothing changed:\n{}", again.stderr);
    assert!(!again.stderr.contains("debootstrap --variant"), "base-images.sh debootstrapped again:\n{}", again.stderr);
    let rebuilt = timed(&mut timings, "docker build again (from the cache)", build);
    assert_eq!(rebuilt, built, "a second build with nothing changed is not the same image (no cache?)");
    // A changed input (here another label) does make a new image.
    let changed = base_images(&["--label", "portcullis.test.changed=1", "runtime"]);
    assert!(changed.stderr.contains("imported"), "a changed input did not make a new image:\n{}", changed.stderr);
    let runtime_id = docker_out(&["image", "inspect", "-f", "{{.Id}}", &runtime_image]);
    let old_runtime = &base_ids[base_names.iter().position(|n| *n == runtime_image).unwrap()];
    assert_ne!(&runtime_id, old_runtime, "a changed input kept the old runtime image");
    let config = docker_out(&[
        "image",
        "inspect",
        "-f",
        "{{.Config.User}}|{{json .Config.Entrypoint}}|{{json .Config.Cmd}}|{{json .Config.Healthcheck.Test}}|{{json .Config.ExposedPorts}}",
        &image,
    ]);
    let fields: Vec<&str> = config.split('|').collect();
    assert_eq!(
        fields[..4],
        [
            "portcullis",
            r#"["portcullis"]"#,
            r#"["run","--config","/etc/portcullis/portcullis.toml"]"#,
            r#"["CMD","portcullis","health"]"#
        ],
        "{config}"
    );
    for port in ["25/tcp", "465/tcp", "587/tcp", "9925/tcp"] {
        assert!(fields[4].contains(port), "port {port} not exposed: {config}");
    }
    // The sizes deploy/docker/README.md states (in MB of 10^6 bytes, as `docker images`), within 15%.
    let size = docker_out(&["image", "inspect", "-f", "{{.Size}}", &image]).parse::<f64>().unwrap() / 1e6;
    let stat = ["run", "--rm", "--entrypoint", "stat", &image, "-c", "%s", "/usr/local/bin/portcullis"];
    let binary = docker_out(&stat).parse::<f64>().unwrap() / 1e6;
    eprintln!("docker test: image {image}: {size:.1} MB, /usr/local/bin/portcullis {binary:.1} MB");
    let readme = std::fs::read_to_string(format!("{REPO}/deploy/docker/README.md")).unwrap();
    for (what, before, measured) in [("image", "The image is about ", size), ("binary", "and the binary (", binary)] {
        let stated = stated_mb(&readme, before);
        assert!(
            (measured / stated - 1.0).abs() < 0.15,
            "deploy/docker/README.md says the {what} is {stated} MB ({before:?}), measured {measured:.1} MB"
        );
    }
    // System roots for backend TLS, though the runtime base has no ca-certificates; and
    // the default config is valid.
    let ca = ["run", "--rm", "--entrypoint", "test", &image, "-s", "/etc/ssl/certs/ca-certificates.crt"];
    must(&mut docker(&ca), "the CA bundle in the image", Duration::from_secs(60));
    let check = ["run", "--rm", &image, "check", "--config", "/etc/portcullis/portcullis.toml"];
    must(&mut docker(&check), "checking the image's default config", Duration::from_secs(60));

    let images = vec![
        ("RUST_IMAGE".to_string(), rust_image.clone()),
        ("RUNTIME_IMAGE".to_string(), runtime_image.clone()),
        ("MAIL_IMAGE".to_string(), image_of("MAIL_IMAGE")),
        ("SCANNER_IMAGE".to_string(), image_of("SCANNER_IMAGE")),
        ("PORTCULLIS_IMAGE".to_string(), image.clone()),
        ("POSTFIX_IMAGE".to_string(), format!("{prefix}/postfix:test")),
        ("SCANNER_BUILD_IMAGE".to_string(), format!("{prefix}/scanner:test")),
    ];

    // 3. deploy/docker/compose.yml. Networks of its own (not the defaults, which a stack a user
    // runs may have), host ports that are free.
    let (smtp_port, admin_port) = (support::free_port(), support::free_port());
    let mut stack =
        Stack { compose: compose.clone(), file: "compose.yml", project: prefix.clone(), env: images.clone() };
    stack.check_defaults(&["rust:1.95-slim-bookworm", "debian:bookworm-slim", "10.152.25.0/24", "2525", "9925"]);
    stack.env.extend([
        ("PORTCULLIS_NET".to_string(), net.clone()),
        ("PORTCULLIS_SMTP_PORT".to_string(), smtp_port.to_string()),
        ("PORTCULLIS_ADMIN_PORT".to_string(), admin_port.to_string()),
    ]);
    timed(&mut timings, "compose build postfix", || {
        stack.must(&["build", "postfix"], "compose build postfix", Duration::from_secs(600))
    });
    timed(&mut timings, "compose up -d", || {
        stack.must(&["up", "-d", "--no-build"], "compose up", Duration::from_secs(300))
    });
    let portcullis = stack.container("portcullis");
    let postfix = stack.container("postfix");
    timed(&mut timings, "portcullis healthy", || wait_healthy(&portcullis, Duration::from_secs(120)));
    let ip = |c: &str| docker_out(&["inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", c]);
    assert_eq!(ip(&portcullis), format!("{net}.10"));
    assert_eq!(ip(&postfix), format!("{net}.20"));

    // Mail from the client container (.77) through Portcullis (.10) to Postfix.
    let marker = support::marker("docker");
    let header = format!("X-Test: {marker}");
    let sent = timed(&mut timings, "swaks from the client container", || {
        stack.swaks(&["client", "--to", "user@example.com", "--header", &header])
    });
    assert!(sent.ok, "swaks through portcullis:\n{}", sent.all());
    check_delivery(&postfix, &queue_id(&sent.all()), &format!("unknown[{net}.77]"), &marker);

    // A relay attempt: refused by Portcullis at RCPT; Postfix never hears of it.
    let relay = stack.swaks(&["client", "--to", "someone@elsewhere.example"]);
    assert!(!relay.ok && relay.all().contains("<** 550 5.7.1"), "relay attempt:\n{}", relay.all());
    assert!(!logs(&postfix).contains("elsewhere.example"), "the relay attempt reached Postfix");

    // Postfix believes XCLIENT from Portcullis only: to the client container it does
    // not offer XCLIENT, and refuses it when sent anyway (swaks will not send it unoffered).
    let session = r#"
        use IO::Socket::INET;
        my $s = IO::Socket::INET->new(PeerAddr => "postfix:25", Timeout => 20) or die "connect: $!";
        sub reply { my $all = ""; while (my $l = <$s>) { $all .= $l; last if $l =~ /^\d{3} / } print $all; $all }
        reply();
        for my $c ("EHLO client.test", "XCLIENT ADDR=192.0.2.9", "QUIT") { print "-> $c\n"; print $s "$c\r\n"; reply() }
    "#;
    let spoof = stack.must(
        &["run", "--rm", "-T", "--entrypoint", "perl", "client", "-e", session],
        "XCLIENT straight to postfix",
        Duration::from_secs(120),
    );
    let (ehlo, xclient) = spoof.stdout.split_once("-> XCLIENT").unwrap_or_else(|| panic!("{}", spoof.stdout));
    assert!(
        ehlo.contains("250 ") && !ehlo.contains("XCLIENT") && xclient.contains("550 5.7.0"),
        "XCLIENT from the client container must be refused:\n{}",
        spoof.stdout
    );

    // The published ports on the host: SMTP greets, the admin endpoint counts.
    let mut smtp = TcpStream::connect(("127.0.0.1", smtp_port)).unwrap();
    smtp.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    // Wait for the final greeting line: the listener faces the Internet, so a first
    // contact gets the pregreet test ("220-", a wait, then "220 ").
    let mut reader = BufReader::new(smtp.try_clone().unwrap());
    let mut greeting = String::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        greeting.push_str(&line);
        if !line.starts_with("220-") {
            break;
        }
    }
    assert!(
        greeting.lines().last().unwrap_or("").starts_with("220 "),
        "greeting on 127.0.0.1:{smtp_port}: {greeting:?}"
    );
    smtp.write_all(b"QUIT\r\n").unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
    let (code, body) = support::http_get(admin, "/readyz");
    assert_eq!(code, 200, "/readyz: {body}");
    let (code, metrics) = support::http_get(admin, "/metrics");
    assert_eq!(code, 200, "/metrics: {metrics}");
    assert!(sample(&metrics, "portcullis_messages_total", "outcome=\"delivered\"") >= 1.0, "{metrics}");
    assert!(sample(&metrics, "portcullis_relay_refusals_total", "") >= 1.0, "{metrics}");

    // Signals reach portcullis as PID 1: SIGHUP reloads, SIGTERM drains and stops.
    docker_out(&["kill", "-s", "HUP", &portcullis]);
    wait_log_line(&portcullis, "configuration reloaded", Duration::from_secs(30));
    let stop = Instant::now();
    stack.must(&["stop", "portcullis"], "compose stop portcullis", Duration::from_secs(120));
    let stopped_in = stop.elapsed();
    let exit = docker_out(&["inspect", "-f", "{{.State.ExitCode}}", &portcullis]);
    let log = logs(&portcullis);
    assert!(
        exit == "0" && log.contains("shutdown requested") && stopped_in < Duration::from_secs(20),
        "SIGTERM should stop portcullis at once and cleanly: exit {exit} after {stopped_in:.1?}\n{}",
        tail(&log, 20)
    );
    timed(&mut timings, "compose down -v", || stack.down());
    drop(stack);

    // 4. deploy/docker/compose.transparent.yml: Portcullis -> clamsmtpd + clamd -> Postfix.
    let (front, back) = (format!("10.153.{}", 26 + pid % 200), format!("10.154.{}", 26 + pid % 200));
    let mut stack = Stack {
        compose,
        file: "compose.transparent.yml",
        project: format!("{prefix}-transparent"),
        env: images.clone(),
    };
    stack.check_defaults(&["10.152.35.0/24", "10.152.36.0/24", "2526", "9926", "enable_ip_masquerade"]);
    stack.env.extend([
        ("PORTCULLIS_FRONT_NET".to_string(), front.clone()),
        ("PORTCULLIS_BACK_NET".to_string(), back.clone()),
        ("PORTCULLIS_SMTP_PORT".to_string(), support::free_port().to_string()),
        ("PORTCULLIS_ADMIN_PORT".to_string(), support::free_port().to_string()),
    ]);
    timed(&mut timings, "compose build scanner (transparent)", || {
        stack.must(&["build", "scanner"], "compose build scanner", Duration::from_secs(600))
    });
    timed(&mut timings, "compose up -d (transparent)", || {
        stack.must(&["up", "-d", "--no-build"], "compose up", Duration::from_secs(300))
    });
    let portcullis = stack.container("portcullis");
    let postfix = stack.container("postfix");
    let scanner = stack.container("scanner");
    timed(&mut timings, "portcullis healthy (transparent)", || wait_healthy(&portcullis, Duration::from_secs(120)));
    let routes = stack.container("portcullis-routes");
    wait_log_line(&routes, &format!("{front}.0/24 is local"), Duration::from_secs(60));

    // A clean message: through the scanner (its header), and Postfix names the client.
    let marker = support::marker("docker-transparent");
    let header = format!("X-Test: {marker}");
    let sent = timed(&mut timings, "swaks through the scanner", || {
        stack.swaks(&["client", "--to", "user@example.com", "--header", &header])
    });
    assert!(sent.ok, "swaks through portcullis and the scanner:\n{}", sent.all());
    let text = check_delivery(&postfix, &queue_id(&sent.all()), &format!("unknown[{front}.77]"), &marker);
    assert!(text.contains("X-Virus-Scanned: ClamAV using ClamSMTP"), "not scanned:\n{text}");

    // EICAR: the scanner's verdict is the reply to end of data, and Postfix gets nothing.
    // (Put together here, so this file does not hold the test signature itself.)
    let eicar = ["X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR", "-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*"].concat();
    let dir = tempfile::tempdir().unwrap();
    let mail = dir.path().join("eicar.eml");
    let eicar_marker = format!("{marker}-eicar");
    std::fs::write(&mail, format!("Subject: eicar\r\nX-Test: {eicar_marker}\r\n\r\n{eicar}\r\n")).unwrap();
    let volume = format!("{}:/tmp/eicar.eml:ro", mail.display());
    let virus = stack.swaks(&["-v", &volume, "client", "--to", "user@example.com", "--data", "@/tmp/eicar.eml"]);
    assert!(virus.all().contains("<-  250 Virus Detected; Discarded Email"), "EICAR:\n{}", virus.all());
    assert!(delivered(&postfix, &eicar_marker).is_none(), "EICAR was delivered");
    wait_log_line(&scanner, "Eicar-Test-Signature-Local.UNOFFICIAL FOUND", Duration::from_secs(30));

    timed(&mut timings, "compose down -v (transparent)", || stack.down());
    drop(stack);

    timed(&mut timings, "removing the images", || drop(_made));
    let left = docker_lines(&["images", "-a", "-q", "--filter", &format!("label={RUN_LABEL}={run_id}")]);
    assert!(left.is_empty(), "images left: {left:?}");
    eprintln!("docker test: total {:.1?}", total.elapsed());
    for (name, took) in &timings {
        eprintln!("    {name:<40} {took:>8.1?}");
    }
}
