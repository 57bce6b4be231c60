//! HTTP-level tests: the real daemon on port 0 with the fake CLI.

mod helpers;

mod auth;
mod errors;
mod health;
mod processes;
mod run_sync;
mod webhooks;
