//! The actors of claude-code-server and the pure logic they wrap.
//!
//! * [`model`]   — the records every part shares: tasks, sessions, run specs and outcomes.
//! * [`error`]   — the one table of error codes and their HTTP statuses.
//! * [`config`]  — the configuration: defaults, merging, validation.
//! * [`claude`]  — the Claude CLI as a child process: argv, stream-json parsing, classification,
//!   process-group supervision.
//! * [`queue`]   — the QueueSupervisor (priority, concurrency, cancel, timeouts) and its workers.
//! * [`store`]   — storage behind one async trait: memory and SQLite.
//! * [`webhook`] — the WebhookActor and its pure parts: payload, signing, retries, SSRF policy.

pub mod claude;
pub mod config;
pub mod error;
pub mod model;
pub mod queue;
pub mod store;
pub mod webhook;
