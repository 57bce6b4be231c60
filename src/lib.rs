//! claude-code-server: the HTTP daemon around the Claude Code CLI.
