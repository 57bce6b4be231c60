//! The `claude-code-server` command.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use actors::config::load::{default_config_path, Environment};
use claude_code_server::app::{Application, Options};
use claude_code_server::logging::{self, LogOptions};

#[derive(Parser)]
#[command(
    name = "claude-code-server",
    version,
    about = "A dependable multi-user HTTP API around the Claude Code CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server in the foreground until SIGTERM or SIGINT.
    Serve {
        /// The config file (JSON). Written with every default on first start.
        /// Default: ~/.claude-code-server/config.json.
        #[arg(long, env = "CCS_CONFIG", value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address to listen on; overrides HOST and the config's `host`.
        #[arg(long, value_name = "H")]
        host: Option<String>,
        /// Port to listen on (0 picks a free one); overrides PORT and the config's `port`.
        #[arg(long, value_name = "P")]
        port: Option<u16>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("claude-code-server: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Serve { config, host, port } => runtime.block_on(serve(config, host, port)),
    }
}

async fn serve(
    config: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
) -> std::process::ExitCode {
    let env = Environment::from_process();
    let config_path = config.unwrap_or_else(|| default_config_path(&env));
    // `serve` runs in the foreground: JSON lines to `logFile` and readable lines to stderr.
    if let Err(e) = logging::init(&LogOptions::for_serve(&config_path, &env)) {
        eprintln!("claude-code-server: cannot set up logging: {e}");
    }
    let opts = Options {
        config_path,
        host,
        port,
        env: Some(env),
    };
    let app = match Application::build(opts).await {
        Ok(app) => app,
        Err(e) => {
            eprintln!("claude-code-server: {e:#}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match app.run_until(shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("claude-code-server: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
}
