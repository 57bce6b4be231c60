//! A faithful fake of the Claude Code CLI for the tests.
fn main() {}
