//! claude-code-server: the HTTP daemon around the Claude Code CLI.
//!
//! * [`app`]   — the application assembled and bound to its port.
//! * [`http`]  — routes, extractors, errors; handlers only validate and talk to the actors.
//! * [`state`] — what handlers share.
//! * [`cli_check`] — whether the Claude CLI answers (`/health`), at start and after reloads.
//! * [`reload`] — config changes while running: the ConfigWatcher and `PATCH /api/config`.
//! * [`logging`] — JSON log file with rotation, stderr, live log level.
//! * [`client`], [`daemon`], [`control`] — the daemon's HTTP client, and `start`/`stop`/`status`.
//! * [`tui`]   — the operator's terminal UI, a client of the daemon over HTTP.
//!
//! The actors and the pure logic they wrap live in the `actors` crate.

pub mod app;
pub mod cli_check;
pub mod client;
pub mod control;
pub mod daemon;
pub mod http;
pub mod logging;
pub mod reload;
pub mod state;
pub mod tui;
