//! The `claude-code-server` command.

use std::io::IsTerminal;
use std::path::PathBuf;

use clap::{CommandFactory, Parser, Subcommand};

use actors::config::load::{default_config_path, Environment};
use claude_code_server::app::{Application, Options};
use claude_code_server::control;
use claude_code_server::daemon::Control;
use claude_code_server::logging::{self, LogOptions};

#[derive(Parser)]
#[command(
    name = "claude-code-server",
    version,
    about = "A dependable multi-user HTTP API around the Claude Code CLI"
)]
struct Cli {
    /// With no command: the TUI when stdout is a terminal, this help otherwise.
    #[command(subcommand)]
    command: Option<Command>,
}

/// How `start`, `stop`, `status` and `tui` find the daemon: the same config as `serve`.
#[derive(clap::Args, Clone)]
struct ControlArgs {
    /// The config file `serve` uses (pid file, address, API keys).
    /// Default: ~/.claude-code-server/config.json.
    #[arg(long, env = "CCS_CONFIG", value_name = "PATH")]
    config: Option<PathBuf>,
    /// Reach the daemon at this URL instead of the config's host and port.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The API key to send (default: the config's first admin key).
    #[arg(long, env = "CCS_API_KEY", value_name = "KEY", hide_env_values = true)]
    api_key: Option<String>,
}

impl ControlArgs {
    fn control(self) -> Control {
        Control::from_process(self.config, self.url, self.api_key)
    }
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
    /// Start the server in the background and wait until it answers.
    Start(ControlArgs),
    /// Stop the background server (SIGTERM, then SIGKILL after the shutdown grace).
    Stop(ControlArgs),
    /// Is the server running? Exit code 0 running, 3 not running, 1 error.
    Status(ControlArgs),
    /// The operator's terminal UI (talks to the server over HTTP).
    Tui(ControlArgs),
    /// Internal: the watchdog `serve` starts (kills its runs' processes when it dies).
    #[command(name = WATCHDOG_COMMAND, hide = true)]
    Watchdog {
        /// The marker the daemon's runs carry.
        marker: String,
    },
}

/// The hidden subcommand `serve` starts its watchdog with.
const WATCHDOG_COMMAND: &str = "internal-watchdog";

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = match cli.command {
        Some(c) => c,
        None if std::io::stdout().is_terminal() => Command::Tui(ControlArgs {
            config: std::env::var_os("CCS_CONFIG").map(PathBuf::from),
            url: None,
            api_key: std::env::var("CCS_API_KEY").ok(),
        }),
        None => {
            let _ = Cli::command().print_help();
            return std::process::ExitCode::from(2);
        }
    };
    // The TUI runs its own worker thread and runtime; it needs none here.
    if let Command::Tui(args) = command {
        return claude_code_server::tui::run(args.control());
    }
    // Nor does the watchdog: it blocks on its pipe, then sweeps.
    if let Command::Watchdog { marker } = command {
        let killed = actors::claude::watchdog::watch(&marker);
        if killed > 0 {
            eprintln!("claude-code-server watchdog: the server is gone; killed {killed} process(es) of its runs");
        }
        return std::process::ExitCode::SUCCESS;
    }
    match command {
        Command::Serve { config, host, port } => run_serve(config, host, port),
        Command::Start(args) => on_actix(async move { control::start(&args.control()).await }),
        Command::Stop(args) => on_actix(async move { control::stop(&args.control()).await }),
        Command::Status(args) => on_actix(async move { control::status(&args.control()).await }),
        Command::Tui(_) | Command::Watchdog { .. } => std::process::ExitCode::SUCCESS, // handled above
    }
}

/// `start`, `stop` and `status` talk to the daemon through awc, whose futures are `!Send`: on
/// an actix System (a current-thread runtime) of their own.
fn on_actix(
    command: impl std::future::Future<Output = std::process::ExitCode>,
) -> std::process::ExitCode {
    actix_rt::System::new().block_on(command)
}

/// `serve` on a multi-threaded tokio runtime.
fn run_serve(
    config: Option<PathBuf>,
    host: Option<String>,
    port: Option<u16>,
) -> std::process::ExitCode {
    // Before the runtime's threads start (they get their own allocator arenas).
    actors::mem::tune_allocator();
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
    let code = runtime.block_on(serve(config, host, port));
    logging::flush();
    code
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
    // Before anything can start a run: every run must carry the watchdog's marker.
    let _watchdog = start_watchdog();
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

/// Start the process that kills this server's runs if the server dies (see
/// `actors::claude::watchdog`). Without it the server still runs; what a crash leaves behind
/// is then killed at the next start (the sweep of interrupted runs).
fn start_watchdog() -> Option<actors::claude::watchdog::Watchdog> {
    // /proc/self/exe: this very executable, even if the file was replaced since (an upgrade).
    let exe = std::path::Path::new("/proc/self/exe");
    match actors::claude::watchdog::Watchdog::start(exe, &[WATCHDOG_COMMAND]) {
        Ok(w) => {
            log::debug!(pid = w.pid(); "watchdog started");
            Some(w)
        }
        Err(e) => {
            log::warn!(error:% = e; "cannot start the watchdog: runs left by a crash are killed at the next start");
            None
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
        log::error!("cannot install signal handlers; stop the server with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => log::info!("SIGTERM received"),
        _ = int.recv() => log::info!("SIGINT received"),
    }
}
