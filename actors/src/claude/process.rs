//! Stub: implemented by the claude-runner work.
use super::{CliEvent, RunnerSettings, StopReason};
use crate::model::{RunOutcome, RunSpec};

pub async fn run(
    _spec: &RunSpec,
    _settings: &RunnerSettings,
    _stop: tokio::sync::watch::Receiver<Option<StopReason>>,
    _on_event: &mut (dyn FnMut(CliEvent) + Send),
) -> RunOutcome {
    unimplemented!()
}

pub async fn cli_version(_settings: &RunnerSettings) -> Option<String> {
    None
}
