//! The actors of claude-code-server and the pure logic they wrap.
//!
//! * [`model`]   — the records every part shares: tasks, sessions, run specs and outcomes.
//! * [`error`]   — the one table of error codes and their HTTP statuses.
//! * [`config`]  — the configuration: defaults, merging, validation.
//! * [`claude`]  — the Claude CLI as a child process: argv, stream-json parsing, classification,
//!   process-group supervision.
//! * [`queue`]   — the QueueSupervisor (priority, concurrency, cancel, timeouts) and its workers.
//! * [`store`]   — storage behind one async trait: memory, SQLite and Redis.
//! * [`cluster`] — several instances on one Redis: instance ids and the control channel.
//! * [`stats`]   — the StatsActor: figures per day, model and key; daily budgets.
//! * [`rate_limit`] — GCRA per API key (or client IP): the RateLimitActor and its table.
//! * [`webhook`] — the WebhookActor and its pure parts: payload, signing, retries, SSRF policy.
//! * [`metrics`] — counters and histograms for `GET /metrics`, and the MetricsActor.
//! * [`mem`]     — giving freed heap back to the OS when the process goes quiet.
//! * [`system`]  — the actix actor system the actors run on: its own threads (arbiters),
//!   reached from anywhere by messages; [`system::Feed`], a tokio channel as an actor's input.

pub mod approval;
pub mod claude;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod mem;
pub mod metrics;
pub mod model;
pub mod queue;
pub mod rate_limit;
pub mod recent;
pub mod retention;
pub mod session;
pub mod stats;
pub mod store;
pub mod system;
pub mod webhook;
