//! The statistics of a cluster: every instance adds each run it ends to one set of counters per
//! UTC day in Redis, and every query reads them, so `GET /api/statistics*` and daily budgets on
//! any instance count the runs of all of them.
//!
//! Why atomic counters rather than one saved document per instance (merged by readers): a
//! document is written every `collectionInterval` (a minute by default), so another instance
//! would see a run up to a minute late, and a daily budget could be overspent by every run
//! started on the other instances meanwhile. Counters are up to date as soon as the run's final
//! record is: a client that got its answer from instance A and asks instance B sees its run.
//! They also survive any instance (nothing is kept in one process's memory) and need no merge
//! on read. The cost is one small script per finished run (or per batch of runs that ended
//! together) and one read per query.
//!
//! Keys (under `<ns>:`):
//!
//! | key | type | content |
//! |---|---|---|
//! | `stc:<day>` | hash | the day's counters ([`super::counters`]: field = JSON array, value = integer) |
//! | `stc-seen:<day>` | set | ids of the tasks counted that day |
//! | `stc-days` | zset | days with counters (`YYYY-MM-DD`), scored by day number |
//!
//! Runs are added by one script (several runs of a day at a time: those that ended while the
//! previous script was on its way) that first adds each run's task id to `stc-seen:<day>` and
//! skips the run if it was there: a retry after a lost answer, or two instances announcing the
//! same end, count the run once. Both day keys expire (`EXPIREAT`) after the retention period, so
//! old days need no pruning pass.

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};

use chrono::{Datelike, Days, NaiveDate};
use redis::{ErrorKind, RedisError, Script};

use super::aggregate::DayStats;
use super::counters;
use crate::cluster::Cluster;
use crate::model::TaskId;
use crate::store::StoreError;

/// `KEYS`: the day's counters, its counted task ids, the index of days. `ARGV`: expiry (unix
/// s), day number, day, oldest day number kept, then for each run: its task id, the number of
/// its `op, field, value` triples, and those. A run already counted is skipped. Returns how
/// many runs were added.
static ADD: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local added, i = 0, 5
while i <= #ARGV do
  local task, first = ARGV[i], i + 2
  i = first + 3 * tonumber(ARGV[i + 1])
  if redis.call('SADD', KEYS[2], task) == 1 then
    added = added + 1
    for j = first, i - 1, 3 do
      local op, f, v = ARGV[j], ARGV[j + 1], ARGV[j + 2]
      if op == '+' then
        redis.call('HINCRBY', KEYS[1], f, v)
      else
        local cur = redis.call('HGET', KEYS[1], f)
        local n = tonumber(v)
        if not cur or (op == '<' and n < tonumber(cur)) or (op == '>' and n > tonumber(cur)) then
          redis.call('HSET', KEYS[1], f, v)
        end
      end
    end
  end
end
if added > 0 then
  redis.call('EXPIREAT', KEYS[1], ARGV[1])
  redis.call('EXPIREAT', KEYS[2], ARGV[1])
  redis.call('ZADD', KEYS[3], ARGV[2], ARGV[3])
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', '(' .. ARGV[4])
end
return added
"#,
    )
});

/// This instance's access to the shared days.
pub struct SharedStats {
    cluster: Arc<Cluster>,
    /// Days kept, counting back from a day (the actor's retention).
    retention_days: u64,
}

fn redis_err(e: RedisError) -> StoreError {
    if e.kind() == ErrorKind::UnexpectedReturnType || e.code() == Some("WRONGTYPE") {
        StoreError::Corrupt(e.to_string())
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

impl SharedStats {
    pub fn new(cluster: Arc<Cluster>, retention_days: u64) -> SharedStats {
        SharedStats {
            cluster,
            retention_days,
        }
    }

    fn day_key(&self, day: NaiveDate) -> String {
        self.cluster.key(&format!("stc:{day}"))
    }

    /// Add the figures of runs of `day` (each one's `delta`: the run alone recorded into a
    /// day), in one script. A run counted already (a retry after a lost answer, two instances
    /// announcing the same end) is skipped, so a retry of a batch that was partly applied adds
    /// each run once. Returns how many runs were added.
    pub async fn add(
        &self,
        day: NaiveDate,
        runs: &[(TaskId, &DayStats)],
    ) -> Result<u64, StoreError> {
        // Kept until the day leaves retention (plus a day of slack for clocks).
        let expires = day
            .checked_add_days(Days::new(self.retention_days + 2))
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map_or(i64::MAX, |t| t.and_utc().timestamp());
        let oldest = day
            .checked_sub_days(Days::new(self.retention_days + 1))
            .unwrap_or(NaiveDate::MIN);
        let mut inv = ADD.prepare_invoke();
        inv.key(self.day_key(day))
            .key(self.cluster.key(&format!("stc-seen:{day}")))
            .key(self.cluster.key("stc-days"))
            .arg(expires)
            .arg(day.num_days_from_ce())
            .arg(day.to_string())
            .arg(oldest.num_days_from_ce());
        let mut any = false;
        for (task, delta) in runs {
            let fields = counters::flatten(delta);
            if fields.is_empty() {
                continue;
            }
            any = true;
            inv.arg(task.to_string()).arg(fields.len());
            for (field, op, value) in fields {
                inv.arg(op.code()).arg(field).arg(value);
            }
        }
        if !any {
            return Ok(0);
        }
        inv.invoke_async(&mut self.cluster.conn())
            .await
            .map_err(redis_err)
    }

    /// The days in `from..=to` that have counters.
    pub async fn load(
        &self,
        from: NaiveDate,
        to: NaiveDate,
    ) -> Result<BTreeMap<NaiveDate, DayStats>, StoreError> {
        let mut conn = self.cluster.conn();
        let days: Vec<String> = redis::cmd("ZRANGEBYSCORE")
            .arg(self.cluster.key("stc-days"))
            .arg(from.num_days_from_ce())
            .arg(to.num_days_from_ce())
            .query_async(&mut conn)
            .await
            .map_err(redis_err)?;
        let days: Vec<NaiveDate> = days.iter().filter_map(|d| d.parse().ok()).collect();
        if days.is_empty() {
            return Ok(BTreeMap::new());
        }
        let mut pipe = redis::pipe();
        for day in &days {
            pipe.cmd("HGETALL").arg(self.day_key(*day));
        }
        let hashes: Vec<Vec<(String, String)>> =
            pipe.query_async(&mut conn).await.map_err(redis_err)?;
        let mut out = BTreeMap::new();
        for (day, fields) in days.into_iter().zip(hashes) {
            if fields.is_empty() {
                continue; // expired, not yet out of the index
            }
            let mut bad = 0;
            let parsed: Vec<(String, i64)> = fields
                .into_iter()
                .filter_map(|(f, v)| match v.parse() {
                    Ok(n) => Some((f, n)),
                    Err(_) => {
                        bad += 1;
                        None
                    }
                })
                .collect();
            let (stats, unreadable) = counters::unflatten(parsed);
            if bad + unreadable > 0 {
                log::warn!(day:% = day, fields = bad + unreadable; "unreadable statistics counters skipped");
            }
            out.insert(day, stats);
        }
        Ok(out)
    }

    /// What `key` (a key bucket: the API key name, `""` for anonymous) spent on `day`.
    pub async fn spent(&self, day: NaiveDate, key: &str) -> Result<f64, StoreError> {
        let v: Option<i64> = redis::cmd("HGET")
            .arg(self.day_key(day))
            .arg(counters::spend_field(key))
            .query_async(&mut self.cluster.conn())
            .await
            .map_err(redis_err)?;
        Ok(v.map_or(0.0, counters::spend_value))
    }
}
