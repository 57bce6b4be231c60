//! Session transcripts under `<config>/projects/<enc(cwd)>/<id>.jsonl`, as the real CLI keeps
//! them, plus the fake's own lock file that reveals two invocations on one session at once.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::json::J;
use crate::usage::{self, ModelUsage};

/// `/tmp/a_b.c` → `-tmp-a-b-c`: every character outside `[A-Za-z0-9]` becomes `-`.
pub fn encode_cwd(cwd: &str) -> String {
    cwd.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

pub fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok() && text.len() == 36
}

/// Where transcripts live for this process.
pub struct Store {
    /// `<config>/projects`; `None` when neither `CLAUDE_CONFIG_DIR` nor `HOME` is set.
    projects: Option<PathBuf>,
    /// The project directory of the current cwd.
    cwd_dir: Option<PathBuf>,
}

impl Store {
    pub fn new(cwd: &str) -> Store {
        let root = std::env::var_os("CLAUDE_CONFIG_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".claude"))
            });
        let projects = root.map(|r| r.join("projects"));
        let cwd_dir = projects.as_ref().map(|p| p.join(encode_cwd(cwd)));
        Store { projects, cwd_dir }
    }

    /// The directories searched for an existing session.
    fn search_dirs(&self, any_cwd: bool) -> Vec<PathBuf> {
        let mut dirs: Vec<PathBuf> = self.cwd_dir.iter().cloned().collect();
        if any_cwd {
            if let Some(projects) = &self.projects {
                if let Ok(entries) = fs::read_dir(projects) {
                    let mut others: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| p.is_dir() && Some(p) != self.cwd_dir.as_ref())
                        .collect();
                    others.sort();
                    dirs.extend(others);
                }
            }
        }
        dirs
    }

    fn find(&self, id: &str, any_cwd: bool) -> Option<PathBuf> {
        self.search_dirs(any_cwd)
            .into_iter()
            .map(|d| d.join(format!("{id}.jsonl")))
            .find(|p| p.is_file())
    }

    /// The session named `title` with `--name`.
    fn find_by_title(&self, title: &str, any_cwd: bool) -> Option<(String, PathBuf)> {
        for dir in self.search_dirs(any_cwd) {
            let Ok(entries) = fs::read_dir(&dir) else {
                continue;
            };
            for path in entries.filter_map(Result::ok).map(|e| e.path()) {
                if path.extension().is_none_or(|e| e != "jsonl") {
                    continue;
                }
                let Ok(text) = fs::read_to_string(&path) else {
                    continue;
                };
                let named = text.lines().any(|line| {
                    serde_json::from_str::<serde_json::Value>(line).is_ok_and(|v| {
                        v["type"] == "custom-title" && v["customTitle"].as_str() == Some(title)
                    })
                });
                if named {
                    let id = path.file_stem()?.to_string_lossy().into_owned();
                    return Some((id, path));
                }
            }
        }
        None
    }

    /// The most recently modified transcript of the cwd (`--continue`).
    fn newest_in_cwd(&self) -> Option<PathBuf> {
        let entries = fs::read_dir(self.cwd_dir.as_ref()?).ok()?;
        entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
            .filter_map(|p| Some((fs::metadata(&p).ok()?.modified().ok()?, p)))
            .max()
            .map(|(_, p)| p)
    }

    fn new_file(&self, id: &str) -> Option<PathBuf> {
        self.cwd_dir.as_ref().map(|d| d.join(format!("{id}.jsonl")))
    }
}

/// What the transcript says so far.
#[derive(Debug, Default, Clone)]
pub struct History {
    /// User prompts (tool results do not count).
    pub user_turns: u32,
    pub last_uuid: Option<String>,
    /// Session totals from the last `cost-state` record.
    pub model_usage: ModelUsage,
}

impl History {
    fn load(path: &Path) -> History {
        let mut h = History::default();
        let Ok(text) = fs::read_to_string(path) else {
            return h;
        };
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["type"] == "user" && v["message"]["content"].is_string() {
                h.user_turns += 1;
            }
            if v["type"] == "cost-state" {
                h.model_usage = usage::model_usage_from(&v["modelUsage"]);
            }
            if let Some(u) = v["uuid"].as_str() {
                h.last_uuid = Some(u.to_string());
            }
        }
        h
    }
}

#[derive(Debug)]
pub struct Session {
    pub id: String,
    /// Where turns are appended; `None` with `--no-session-persistence` (or no config dir).
    pub file: Option<PathBuf>,
    pub history: History,
}

#[derive(Debug, PartialEq)]
pub enum SessionError {
    InUse(String),
    NotFound(String),
    NoTitleMatch(String),
    ResumeNeedsValue,
    SessionIdNeedsFork,
}

impl SessionError {
    /// The stderr text of the real CLI.
    pub fn message(&self) -> String {
        match self {
            SessionError::InUse(id) => format!("Error: Session ID {id} is already in use."),
            SessionError::NotFound(id) => format!("No conversation found with session ID: {id}"),
            SessionError::NoTitleMatch(v) => format!(
                "Error: --resume requires a valid session ID or session title when used with --print. \
                 Usage: claude -p --resume <session-id|title>. Provided value \"{v}\" is not a UUID \
                 and does not match any session title."
            ),
            SessionError::ResumeNeedsValue => "Error: --resume requires a valid session ID or session title \
                 when used with --print. Usage: claude -p --resume <session-id|title>."
                .to_string(),
            SessionError::SessionIdNeedsFork => "Error: --session-id can only be used with --continue or \
                 --resume if --fork-session is also specified."
                .to_string(),
        }
    }
}

/// The session flags of one invocation.
pub struct Request<'a> {
    pub session_id: Option<&'a str>,
    /// `Some(None)`: `--resume` without a value.
    pub resume: Option<Option<&'a str>>,
    pub continue_: bool,
    pub fork: bool,
    pub persist: bool,
    pub any_cwd: bool,
}

pub fn resolve(store: &Store, req: &Request<'_>) -> Result<Session, SessionError> {
    if req.session_id.is_some() && (req.resume.is_some() || req.continue_) && !req.fork {
        return Err(SessionError::SessionIdNeedsFork);
    }
    let source = match req.resume {
        Some(None) => return Err(SessionError::ResumeNeedsValue),
        Some(Some(value)) if is_uuid(value) => Some((
            value.to_string(),
            store
                .find(value, req.any_cwd)
                .ok_or_else(|| SessionError::NotFound(value.to_string()))?,
        )),
        Some(Some(value)) => Some(
            store
                .find_by_title(value, req.any_cwd)
                .ok_or_else(|| SessionError::NoTitleMatch(value.to_string()))?,
        ),
        None if req.continue_ => store.newest_in_cwd().and_then(|p| {
            let id = p.file_stem()?.to_string_lossy().into_owned();
            Some((id, p))
        }),
        None => None,
    };

    let new_id = || {
        req.session_id
            .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_string)
    };
    let check_free = |id: &str| match req.session_id.and_then(|_| store.find(id, req.any_cwd)) {
        Some(_) => Err(SessionError::InUse(id.to_string())),
        None => Ok(()),
    };

    match source {
        Some((id, path)) if !req.fork => Ok(Session {
            history: History::load(&path),
            file: req.persist.then_some(path),
            id,
        }),
        Some((_, path)) => {
            let id = new_id();
            check_free(&id)?;
            let history = History::load(&path);
            let file = if req.persist {
                store.new_file(&id)
            } else {
                None
            };
            if let Some(f) = &file {
                copy_history(&path, f, &id);
            }
            Ok(Session { id, file, history })
        }
        None => {
            let id = new_id();
            check_free(&id)?;
            Ok(Session {
                file: if req.persist {
                    store.new_file(&id)
                } else {
                    None
                },
                id,
                history: History::default(),
            })
        }
    }
}

/// `--fork-session`: the transcript copied under the new id (the original stays untouched).
fn copy_history(from: &Path, to: &Path, new_id: &str) {
    let Ok(text) = fs::read_to_string(from) else {
        return;
    };
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        match serde_json::from_str::<serde_json::Value>(line) {
            Ok(mut v) => {
                if let Some(obj) = v.as_object_mut() {
                    if obj.contains_key("sessionId") {
                        obj.insert("sessionId".into(), new_id.into());
                    }
                }
                out.push_str(&v.to_string());
            }
            Err(_) => out.push_str(line),
        }
        out.push('\n');
    }
    if let Some(dir) = to.parent() {
        let _ = fs::create_dir_all(dir);
    }
    let _ = fs::write(to, out);
}

impl Session {
    /// Appends one record. Each record is a single `write` on an `O_APPEND` descriptor, so
    /// records of concurrent writers stay whole (the interleaving is the service's bug to
    /// avoid, and the lock file reports it).
    pub fn append(&self, record: &J) {
        let Some(file) = &self.file else {
            return;
        };
        if let Some(dir) = file.parent() {
            let _ = fs::create_dir_all(dir);
        }
        if let Ok(mut f) = OpenOptions::new().append(true).create(true).open(file) {
            let _ = f.write_all((record.to_line() + "\n").as_bytes());
        }
    }

    /// Takes `<id>.lock` next to the transcript. Returns `true` when another live process
    /// holds it, i.e. two invocations work on this session at the same time.
    pub fn lock(&self) -> bool {
        let Some(file) = &self.file else {
            return false;
        };
        let lock = file.with_extension("lock");
        if let Some(dir) = lock.parent() {
            let _ = fs::create_dir_all(dir);
        }
        for _ in 0..2 {
            match OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o644)
                .open(&lock)
            {
                Ok(mut f) => {
                    let _ = f.write_all(std::process::id().to_string().as_bytes());
                    *LOCK.lock().unwrap_or_else(|e| e.into_inner()) = Some(lock);
                    return false;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if holder_alive(&lock) {
                        return true;
                    }
                    // Left behind by a fake that was SIGKILLed: not a concurrent run.
                    let _ = fs::remove_file(&lock);
                }
                Err(_) => return false,
            }
        }
        false
    }
}

/// The lock file this process owns, removed at exit (also on SIGTERM/SIGINT).
static LOCK: Mutex<Option<PathBuf>> = Mutex::new(None);

pub fn release_lock() {
    let taken = LOCK.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(path) = taken {
        let _ = fs::remove_file(path);
    }
}

fn holder_alive(lock: &Path) -> bool {
    let Some(pid) = fs::read_to_string(lock)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
    else {
        // Being written right now by its creator: count it as held.
        return true;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    exists && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let after = s.rsplit_once(')')?.1;
            after.split_whitespace().next().map(|st| st == "Z")
        })
        .unwrap_or(false)
}
