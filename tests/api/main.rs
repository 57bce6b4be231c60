//! HTTP-level tests: the real daemon on port 0 with the fake CLI, and end to end with the real
//! CLI against an in-process mock of the Anthropic API.

mod helpers;
mod mock_anthropic;

mod auth;
mod daemon;
mod e2e_real_cli;
mod errors;
mod health;
mod idempotency;
mod processes;
mod rate_limit;
mod run_sync;
mod sessions;
mod statistics;
mod tasks;
mod webhooks;
