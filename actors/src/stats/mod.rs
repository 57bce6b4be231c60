//! Statistics: requests, tokens, cost and durations per UTC day, per requested model and per
//! API key, and the per-key daily spend that budgets read.
//!
//! * [`sketch`]    — a mergeable log-bucket sketch for duration percentiles (pure).
//! * [`aggregate`] — counters, one day's cells and their rollups; what counts and where (pure).
//! * [`budget`]    — the daily budget decision (pure).
//! * [`counters`]  — a day as flat counters that instances add to concurrently (pure).
//! * [`shared`]    — those counters in Redis: the statistics of a cluster.
//! * [`actor`]     — the StatsActor (actix, on the actor system's arbiter): folds the queue's
//!   final records, persists days (or adds them to the shared counters), answers queries and
//!   budget checks; [`StatsHandle`] is how the HTTP layer asks it.

pub mod actor;
pub mod aggregate;
pub mod budget;
pub mod counters;
pub mod shared;
pub mod sketch;

pub use actor::{
    DaySelection, Flush, QueryDaily, QueryRollup, SpentToday, StatsActor, StatsError, StatsHandle,
};
pub use aggregate::{Counters, DayStats, Rollup, Scope, ANONYMOUS_KEY};
pub use budget::BudgetError;
