//! Rate limiting: GCRA per API key (per client IP when anonymous).
//!
//! * [`gcra`]    — the algorithm and the `RateLimit-*` header values (pure, exact integers).
//! * [`policy`]  — which limit applies to a caller, from the live config (pure).
//! * [`limiter`] — the sharded, self-evicting map of per-key state of one instance.
//! * [`shared`]  — the same limit across every instance on one Redis ([`Limiter`], what the
//!   HTTP layer calls: shared with a cluster, local otherwise and while Redis is away).

pub mod gcra;
pub mod limiter;
pub mod policy;
pub mod shared;

pub use gcra::{Decision, Policy};
pub use limiter::{Clock, MonotonicClock, RateLimiter};
pub use policy::{limiter_key, policy_for};
pub use shared::Limiter;
