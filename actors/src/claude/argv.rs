//! Stub: implemented by the claude-runner work.
