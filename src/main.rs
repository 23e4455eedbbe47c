//! The `portcullis` command line: `run`, `check`, `explain`, `health`, `bans`,
//! `hash-password`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config;
use portcullis::server::{Reloader, Server};
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

// A session allocates and frees a few dozen small buffers per message, on two threads:
// mimalloc's thread-local free lists make each a handful of instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A transparent SMTP filtering proxy")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve: listen, filter, forward (SIGHUP: reload the config; SIGTERM or Ctrl-C:
    /// stop accepting, drain, exit).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: list every error and warning; exit 1 on errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// What would happen to one client: the connection verdict and its rule, the relay
    /// verdict for each recipient, and what the first backend would be told.
    Explain {
        #[arg(long, short)]
        config: PathBuf,
        /// The client's address (IP or IP:PORT).
        #[arg(long, value_parser = parse_client)]
        client: std::net::SocketAddr,
        /// The listener it connects to (default: the first).
        #[arg(long)]
        listener: Option<String>,
        /// The local address it connected to (default: the listener's bind).
        #[arg(long)]
        local: Option<std::net::SocketAddr>,
        /// The user it authenticated as.
        #[arg(long)]
        user: Option<String>,
        /// The name it gives in EHLO.
        #[arg(long, default_value = "client.example")]
        helo: String,
        /// Recipients to judge.
        #[arg(long, num_args = 1..)]
        rcpt: Vec<String>,
    },
    /// Exit 0 when the admin endpoint says the server is ready (/readyz), 1 otherwise;
    /// for container health checks.
    Health {
        /// The admin endpoint's address ([admin] bind).
        #[arg(long, default_value = "127.0.0.1:9925")]
        admin: std::net::SocketAddr,
        /// Give up after this long.
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// List the bans in force (client network, seconds left, reason), or lift one.
    Bans {
        /// The admin endpoint's address ([admin] bind).
        #[arg(long, default_value = "127.0.0.1:9925")]
        admin: std::net::SocketAddr,
        /// Lift the ban on this client address.
        #[arg(long)]
        lift: Option<std::net::IpAddr>,
        /// The file holding the admin token ([admin] token_file): listing and lifting
        /// bans both need it.
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
    /// Read a password on standard input (one line) and print `USER:HASH` for the
    /// users file ([auth] users_file).
    HashPassword {
        /// The user name to put before the hash.
        user: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Check { config } => check(&config),
        Cmd::HashPassword { user } => hash_password(&user),
        Cmd::Health { admin, timeout } => health(admin, timeout),
        Cmd::Bans { admin, lift, token_file } => bans(admin, lift, token_file.as_deref()),
        Cmd::Explain { config, client, listener, local, user, helo, rcpt } => {
            let question = portcullis::explain::Question { client, listener, local, user, helo, rcpts: rcpt };
            explain(&config, &question)
        }
        Cmd::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn parse_client(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse::<std::net::SocketAddr>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(|ip| std::net::SocketAddr::new(ip, 0)))
        .map_err(|_| format!("{text:?} is not an IP address or IP:PORT"))
}

fn explain(path: &std::path::Path, question: &portcullis::explain::Question) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(loaded) => loaded,
        Err(e) => {
            println!("{e}");
            println!("{}: {} error(s)", path.display(), e.problems.len());
            return ExitCode::FAILURE;
        }
    };
    match portcullis::explain::explain(&loaded.config, question) {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn health(admin: std::net::SocketAddr, limit: std::time::Duration) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("portcullis: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(portcullis::admin::check_ready(admin, limit)) {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            ExitCode::FAILURE
        }
    }
}

fn bans(admin: std::net::SocketAddr, lift: Option<std::net::IpAddr>, token_file: Option<&std::path::Path>) -> ExitCode {
    let token = match token_file.map(std::fs::read_to_string) {
        None => None,
        Some(Ok(t)) => Some(t.trim().to_string()),
        Some(Err(e)) => {
            eprintln!("portcullis: token file: {e}");
            return ExitCode::FAILURE;
        }
    };
    let (method, path) = match lift {
        Some(ip) => (hyper::Method::DELETE, format!("/bans/{ip}")),
        None => (hyper::Method::GET, "/bans".to_string()),
    };
    let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
        eprintln!("portcullis: cannot start");
        return ExitCode::FAILURE;
    };
    let limit = std::time::Duration::from_secs(10);
    match runtime.block_on(portcullis::admin::call(admin, method, &path, token.as_deref(), limit)) {
        Ok(text) => {
            println!("{}", if text.is_empty() { "no bans" } else { &text });
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn hash_password(user: &str) -> ExitCode {
    if let Err(e) = portcullis::auth::users::check_name(user) {
        eprintln!("portcullis: {user:?}: {e}");
        return ExitCode::FAILURE;
    }
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        eprint!("password for {user} (input is shown): ");
    }
    let mut password = String::new();
    if std::io::stdin().read_line(&mut password).is_err() {
        eprintln!("portcullis: cannot read the password");
        return ExitCode::FAILURE;
    }
    let password = password.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        eprintln!("portcullis: empty password");
        return ExitCode::FAILURE;
    }
    match portcullis::auth::users::hash_password(password) {
        Ok(hash) => {
            println!("{user}:{hash}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("portcullis: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(loaded) => {
            for w in &loaded.warnings {
                println!("warning: {w}");
            }
            let c = &loaded.config;
            println!(
                "{}: ok ({} listener(s), {} backend(s), {} warning(s))",
                path.display(),
                c.listeners.len(),
                c.backends.len(),
                loaded.warnings.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{e}");
            println!("{}: {} error(s)", path.display(), e.problems.len());
            ExitCode::FAILURE
        }
    }
}

fn run(path: &std::path::Path) -> anyhow::Result<()> {
    let loaded = config::load(path).map_err(|e| anyhow::anyhow!("{}:\n{e}", path.display()))?;
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match loaded.config.log_format {
        config::LogFormat::Json => logs.json().init(),
        config::LogFormat::Text => logs.with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())).init(),
    }
    for w in &loaded.warnings {
        tracing::warn!("config: {w}");
    }
    let server = Server::bind(loaded.config)?;
    let shutdown = CancellationToken::new();
    // Signals are watched by a small runtime of their own; the workers have theirs.
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let (token, reloader, path) = (shutdown.clone(), server.reloader(), path.to_path_buf());
    std::thread::Builder::new()
        .name("portcullis-signals".into())
        .spawn(move || signals.block_on(watch_signals(token, reloader, path)))
        .context("starting the signal thread")?;
    server.run(shutdown)?;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP reloads `path`; SIGTERM or Ctrl-C starts the drain.
async fn watch_signals(shutdown: CancellationToken, reloader: Reloader, path: PathBuf) {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut hup) = match (signal(SignalKind::terminate()), signal(SignalKind::hangup())) {
        (Ok(t), Ok(h)) => (t, h),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!(error = %e, "cannot watch SIGTERM and SIGHUP");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            _ = hup.recv() => {
                // Errors are logged by the reloader; the running config stays.
                let _ = reloader.reload_file(&path);
            }
        }
    }
    tracing::info!("shutdown requested: no new connections, draining sessions");
    shutdown.cancel();
}
