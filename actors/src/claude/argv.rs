//! Stub: implemented by the claude-runner work.
pub fn neutralise_prompt(prompt: &str, _allow_slash: bool) -> String {
    prompt.to_string()
}
