//! Turn accounting. `total_cost_usd` in the CLI's result is per run up to 2.1.197 and
//! cumulative over the session in later versions (2.1.330 observed): a fork starts from the
//! cumulative total of the session it copies. Counting it right needs the session's last
//! reported total as the baseline.

use chrono::{DateTime, Utc};

use crate::model::{Session, Task, TaskStatus};

/// How the CLI reports `total_cost_usd` across resumed turns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CostMode {
    PerRun,
    Cumulative,
}

/// The last version observed to report cost per run.
const LAST_PER_RUN_VERSION: (u64, u64, u64) = (2, 1, 197);

/// The cost mode of a CLI version (`2.1.330`, or `2.1.330 (Claude Code)`). Unknown versions
/// count as per run: then a cumulative CLI over-counts, which errs on the side of budgets.
pub fn cost_mode(version: Option<&str>) -> CostMode {
    let Some(v) = version.and_then(parse_version) else {
        return CostMode::PerRun;
    };
    if v > LAST_PER_RUN_VERSION {
        CostMode::Cumulative
    } else {
        CostMode::PerRun
    }
}

fn parse_version(s: &str) -> Option<(u64, u64, u64)> {
    let core = s.split_whitespace().next()?;
    let mut parts = core.split('.').map(|p| p.parse::<u64>().ok());
    Some((
        parts.next()??,
        parts.next()??,
        parts.next().flatten().unwrap_or(0),
    ))
}

/// What one run cost, given what the CLI reported and the session's baseline (its last
/// reported cumulative total; for a fork, the parent's; for a first turn, 0).
pub fn run_cost(mode: CostMode, reported: f64, baseline: f64) -> f64 {
    let reported = if reported.is_finite() {
        reported.max(0.0)
    } else {
        0.0
    };
    match mode {
        CostMode::PerRun => reported,
        // An error result reports 0 (or less than the baseline): nothing was added.
        CostMode::Cumulative => (reported - baseline).max(0.0),
    }
}

/// Apply a finished turn to its session: cost, completed-turn count, last task, baseline.
pub fn apply_turn(
    session: &mut Session,
    task: &Task,
    mode: CostMode,
    reported: f64,
    run_cost: f64,
    now: DateTime<Utc>,
) {
    session.total_cost_usd += run_cost;
    if task.status == TaskStatus::Completed {
        session.messages_count += 1;
    }
    session.last_task_id = Some(task.id);
    session.updated_at = now;
    if mode == CostMode::Cumulative && reported > session.last_reported_cost_usd {
        session.last_reported_cost_usd = reported;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::claude::stream::parse_json_output;
    use crate::session::fixtures::completed_task;

    fn fixture_cost(name: &str) -> f64 {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/claude-cli/")
            .to_string()
            + name
            + ".stdout";
        let text = std::fs::read_to_string(&path).expect("fixture");
        parse_json_output(&text)
            .expect("result line")
            .reported_cost_usd
    }

    fn session() -> Session {
        super::super::fixtures::session("/p", Utc::now())
    }

    #[test]
    fn versions() {
        assert_eq!(cost_mode(Some("2.1.197")), CostMode::PerRun);
        assert_eq!(cost_mode(Some("2.1.197 (Claude Code)")), CostMode::PerRun);
        assert_eq!(cost_mode(Some("2.0.0")), CostMode::PerRun);
        assert_eq!(cost_mode(Some("1.0.128")), CostMode::PerRun);
        assert_eq!(cost_mode(Some("2.1.198")), CostMode::Cumulative);
        assert_eq!(cost_mode(Some("2.1.330")), CostMode::Cumulative);
        assert_eq!(cost_mode(Some("3.0")), CostMode::Cumulative);
        assert_eq!(cost_mode(None), CostMode::PerRun);
        assert_eq!(cost_mode(Some("garbage")), CostMode::PerRun);
    }

    /// 2.1.330 (recorded runs s1 → s2 → s3 → s4, then s5 forks): totals grow by one run's
    /// cost each turn; the session must count each run once.
    #[test]
    fn cumulative_cli_is_counted_once_per_turn() {
        let mode = cost_mode(Some("2.1.330"));
        let mut s = session();
        let task = completed_task();
        let mut per_run = Vec::new();
        for name in ["s1", "s2", "s3_othercwd"] {
            let reported = fixture_cost(name);
            let cost = run_cost(mode, reported, s.last_reported_cost_usd);
            per_run.push(cost);
            apply_turn(&mut s, &task, mode, reported, cost, Utc::now());
        }
        for c in &per_run {
            assert!((c - 0.00034).abs() < 1e-9, "{per_run:?}");
        }
        assert!(
            (s.total_cost_usd - 0.00102).abs() < 1e-9,
            "{}",
            s.total_cost_usd
        );
        assert_eq!(s.messages_count, 3);
        // s4 (a turn via --continue) reported 0.00136; the fork s5 reports 0.0017 cumulative:
        // its own run cost is the difference from the parent's last total.
        let parent_last = 0.00136;
        let fork_cost = run_cost(mode, fixture_cost("s5_fork"), parent_last);
        assert!((fork_cost - 0.00034).abs() < 1e-9, "{fork_cost}");
    }

    /// 2.1.197 (recorded v2.1.197_json then v2.1.197_resume_samecwd): each result is per run.
    #[test]
    fn per_run_cli_adds_each_result() {
        let mode = cost_mode(Some("2.1.197"));
        let mut s = session();
        let task = completed_task();
        for name in ["v2.1.197_json", "v2.1.197_resume_samecwd"] {
            let reported = fixture_cost(name);
            let cost = run_cost(mode, reported, s.last_reported_cost_usd);
            apply_turn(&mut s, &task, mode, reported, cost, Utc::now());
        }
        assert!(
            (s.total_cost_usd - 0.00085).abs() < 1e-9,
            "{}",
            s.total_cost_usd
        );
        assert_eq!(s.messages_count, 2);
        assert_eq!(s.last_task_id, Some(task.id));
    }

    #[test]
    fn a_failed_turn_adds_its_cost_but_no_message() {
        let mode = CostMode::Cumulative;
        let mut s = session();
        s.last_reported_cost_usd = 0.5;
        s.total_cost_usd = 0.5;
        let mut task = completed_task();
        task.status = TaskStatus::Failed;
        // An API error reports 0 in cumulative mode: nothing added, baseline kept.
        let cost = run_cost(mode, 0.0, s.last_reported_cost_usd);
        apply_turn(&mut s, &task, mode, 0.0, cost, Utc::now());
        assert_eq!(cost, 0.0);
        assert_eq!(s.messages_count, 0);
        assert_eq!(s.last_reported_cost_usd, 0.5);
        assert!(run_cost(CostMode::PerRun, f64::NAN, 0.0) == 0.0);
    }
}
