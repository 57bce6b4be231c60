//! HTTP-level tests: the real daemon on port 0 with the fake CLI, and end to end with the real
//! CLI against an in-process mock of the Anthropic API.

mod helpers;
mod mock_anthropic;
// The private redis-server of the Redis tests, shared with the storage tests of `actors`.
#[allow(dead_code)]
#[path = "../../actors/src/store/redis/test_server.rs"]
mod redis_server;

mod anthropic;
mod approvals;
mod auth;
mod cluster;
mod cluster_events;
mod cluster_sessions;
mod cluster_shared;
mod config_patch;
mod daemon;
mod deploy;
mod disconnect;
mod durability;
mod e2e_real_cli;
mod e2e_sessions;
mod errors;
mod events;
mod health;
mod idempotency;
mod keep_alive;
mod logs;
mod metrics;
mod openai;
mod openapi;
mod processes;
mod rate_limit;
mod readme;
mod redis;
mod reload;
mod responses;
mod run_sync;
mod sdk;
mod sessions;
mod statistics;
mod tasks;
mod webhooks;
