//! The `portcullis` command line: `run` and `check`.

use anyhow::Context;
use clap::{Parser, Subcommand};
use portcullis::config;
use portcullis::server::Server;
use std::path::PathBuf;
use std::process::ExitCode;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(name = "portcullis", version, about = "A transparent SMTP filtering proxy")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve: listen, filter, forward (SIGTERM or Ctrl-C: stop accepting, drain, exit).
    Run {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file: list every error and warning; exit 1 on errors.
    Check {
        #[arg(long, short)]
        config: PathBuf,
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
        Cmd::Run { config } => match run(&config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portcullis: {e:#}");
                ExitCode::FAILURE
            }
        },
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
    let token = shutdown.clone();
    std::thread::Builder::new()
        .name("portcullis-signals".into())
        .spawn(move || signals.block_on(stop_on_signal(token)))
        .context("starting the signal thread")?;
    server.run(shutdown)?;
    tracing::info!("stopped");
    Ok(())
}

async fn stop_on_signal(shutdown: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot watch SIGTERM");
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutdown requested: no new connections, draining sessions");
    shutdown.cancel();
}
