//! Sessions: multi-turn conversations pinned to one project directory and one model.
//!
//! * [`accounting`] — what a turn cost and how it changes the session record, for CLIs that
//!   report cost per run and for those that report it cumulatively per session.
//!
//! Turns of one session never overlap: the QueueSupervisor keeps one lane per session (see
//! `queue::lanes`) and runs a session's next turn only after the previous one ended; the
//! worker applies a turn's accounting before it frees the lane.

pub mod accounting;
