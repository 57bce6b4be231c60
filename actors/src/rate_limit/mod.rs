//! Rate limiting: GCRA per API key (per client IP when anonymous).
//!
//! * [`gcra`]    — the algorithm and the `RateLimit-*` header values (pure, exact integers).
//! * [`policy`]  — which limit applies to a caller, from the live config (pure).
//! * [`limiter`] — the per-key state of one instance: a `DashMap` of GCRA states, swept of
//!   idle keys.
//! * [`shared`]  — the same limit across every instance on one Redis (a Lua script).
//! * [`actor`]   — the RateLimitActor (actix): owns the table, sweeps it, follows config
//!   reloads and owns the Redis sharing; and [`Limiter`], its handle, what the HTTP layer
//!   calls (the table directly without Redis; through the actor with it).

pub mod actor;
pub mod gcra;
pub mod limiter;
pub mod policy;
pub mod shared;

pub use actor::{Limiter, RateLimitActor};
pub use gcra::{Decision, Policy};
pub use limiter::{Clock, MonotonicClock, Table};
pub use policy::{limiter_key, policy_for};
