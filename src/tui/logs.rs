//! Logs: the daemon's log file (`logFile` in the config), formatted, with follow mode and
//! search. The file is read directly (on the worker thread); no shell command is ever built.

use std::collections::VecDeque;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cursive::theme::{BaseColor, Color};
use cursive::traits::{Nameable, Resizable, Scrollable};
use cursive::utils::markup::StyledString;
use cursive::view::ScrollStrategy;
use cursive::views::{LinearLayout, NamedView, OnEventView, ScrollView, TextView};
use cursive::Cursive;

use super::log_format::{matches, parse};
use super::widgets::{ctx, prompt, push_screen, set_text};
use super::worker::{unique_name, Ctx, Live};

/// Lines kept in memory (the newest).
pub const MAX_LINES: usize = 5000;
/// How much of the end of a big file is read when the screen opens.
const TAIL_BYTES: u64 = 2 * 1024 * 1024;
const FOLLOW_EVERY: Duration = Duration::from_millis(500);

/// The file as read so far.
#[derive(Debug, Default)]
pub struct Tail {
    pub lines: VecDeque<String>,
    /// Where the next read starts.
    pos: u64,
    /// The file's inode: a different one means the file was rotated.
    ino: u64,
    /// An incomplete last line, completed by a later read.
    partial: Vec<u8>,
    /// Reading started mid-file: the first line read is a fragment.
    skip_first_line: bool,
}

impl Tail {
    /// Read what was appended since the last call (everything, at first or after a rotation
    /// or truncation). Returns whether anything changed.
    pub fn read_more(&mut self, path: &Path) -> std::io::Result<bool> {
        let mut f = std::fs::File::open(path)?;
        let meta = f.metadata()?;
        let (len, ino) = (meta.len(), meta.ino());
        let mut changed = false;
        if ino != self.ino || len < self.pos {
            // New file (first read, rotation) or truncated: start over from its tail.
            let pos = len.saturating_sub(TAIL_BYTES);
            *self = Tail {
                ino,
                pos,
                skip_first_line: pos > 0,
                ..Tail::default()
            };
            changed = true;
        }
        if len == self.pos {
            return Ok(changed);
        }
        f.seek(SeekFrom::Start(self.pos))?;
        let mut bytes = Vec::new();
        f.take(len - self.pos).read_to_end(&mut bytes)?;
        self.pos += bytes.len() as u64;
        let mut buf = std::mem::take(&mut self.partial);
        buf.extend_from_slice(&bytes);
        let mut start = 0;
        for (i, b) in buf.iter().enumerate() {
            if *b == b'\n' {
                let line = &buf[start..i];
                if std::mem::take(&mut self.skip_first_line) {
                    start = i + 1;
                    continue;
                }
                self.push(
                    String::from_utf8_lossy(line)
                        .trim_end_matches('\r')
                        .to_string(),
                );
                start = i + 1;
            }
        }
        self.partial = buf[start..].to_vec();
        Ok(true)
    }

    fn push(&mut self, line: String) {
        if self.lines.len() == MAX_LINES {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

/// The formatted lines matching `query` (lower-cased; empty: all), coloured by level.
pub fn render(lines: &VecDeque<String>, query: &str) -> (StyledString, usize) {
    let q = query.to_lowercase();
    let mut out = StyledString::new();
    let mut count = 0;
    for raw in lines {
        let entry = parse(raw);
        if !matches(raw, &entry, &q) {
            continue;
        }
        count += 1;
        let text = format!("{}\n", entry.display());
        match entry.level.as_deref() {
            Some("ERROR") => out.append_styled(text, Color::Dark(BaseColor::Red)),
            Some("WARN") => out.append_styled(text, Color::Dark(BaseColor::Yellow)),
            Some("DEBUG") | Some("TRACE") => out.append_styled(text, Color::Dark(BaseColor::Blue)),
            _ => out.append_plain(text),
        }
    }
    (out, count)
}

#[derive(Debug, Default)]
struct ViewState {
    follow: bool,
    query: String,
}

#[derive(Clone)]
struct Logs {
    c: Ctx,
    live: Live,
    text: String,
    scroll: String,
    info: String,
    tail: Arc<Mutex<Tail>>,
    view: Arc<Mutex<ViewState>>,
    path: Arc<Mutex<Option<PathBuf>>>,
}

impl Logs {
    fn follow(&self) -> bool {
        self.view.lock().map(|v| v.follow).unwrap_or(false)
    }

    fn query(&self) -> String {
        self.view
            .lock()
            .map(|v| v.query.clone())
            .unwrap_or_default()
    }

    /// Read what is new (on the worker) and show it.
    async fn refresh(&self, force: bool) {
        let path = match self.log_path() {
            Ok(p) => p,
            Err(e) => return self.show_error(e),
        };
        let read = match self.tail.lock() {
            Ok(mut t) => t.read_more(&path),
            Err(_) => return,
        };
        match read {
            Ok(changed) if changed || force => self.show(&path),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.show_error(format!(
                "{} does not exist yet (the daemon writes it when started with `start`).",
                path.display()
            )),
            Err(e) => self.show_error(format!("cannot read {}: {e}", path.display())),
        }
    }

    fn log_path(&self) -> Result<PathBuf, String> {
        if let Ok(Some(p)) = self.path.lock().map(|p| p.clone()) {
            return Ok(p);
        }
        let p = self
            .c
            .control
            .resolve()
            .map(|r| r.log_file)
            .map_err(|e| e.to_string())?;
        if let Ok(mut slot) = self.path.lock() {
            *slot = Some(p.clone());
        }
        Ok(p)
    }

    fn show(&self, path: &Path) {
        let query = self.query();
        let (styled, count, total) = match self.tail.lock() {
            Ok(t) => {
                let (s, c) = render(&t.lines, &query);
                (s, c, t.lines.len())
            }
            Err(_) => return,
        };
        let search = if query.is_empty() {
            String::new()
        } else {
            format!(" · search \"{query}\": {count} matching")
        };
        let info = format!(
            "{} · {total} lines{search} · follow {}",
            path.display(),
            if self.follow() { "ON" } else { "off" }
        );
        let info_name = self.info.clone();
        self.c
            .ui
            .update_view(&self.live, &self.text, move |v: &mut TextView| {
                v.set_content(styled)
            });
        self.c.ui.update(move |siv| set_text(siv, &info_name, info));
    }

    fn show_error(&self, e: String) {
        self.c
            .ui
            .update_view(&self.live, &self.text, move |v: &mut TextView| {
                v.set_content(e)
            });
    }

    fn spawn_refresh(&self, force: bool) {
        let me = self.clone();
        self.c.spawn(move || async move { me.refresh(force).await });
    }
}

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let logs = Logs {
        c,
        live: Live::new(),
        text: unique_name("logs.text"),
        scroll: unique_name("logs.scroll"),
        info: unique_name("logs.info"),
        tail: Arc::default(),
        view: Arc::default(),
        path: Arc::default(),
    };
    let body = LinearLayout::vertical()
        .child(TextView::new("Loading…").with_name(&logs.info))
        .child(
            TextView::new("")
                .with_name(&logs.text)
                .scrollable()
                // Opens on the newest lines; scrolling up leaves them there.
                .scroll_strategy(ScrollStrategy::StickToBottom)
                .with_name(&logs.scroll)
                .full_screen(),
        );
    let (follow, search, clear, reload) = (logs.clone(), logs.clone(), logs.clone(), logs.clone());
    let view = OnEventView::new(body)
        .on_event('f', move |siv| {
            let on = match follow.view.lock() {
                Ok(mut v) => {
                    v.follow = !v.follow;
                    v.follow
                }
                Err(_) => false,
            };
            // Following sticks to the newest line; otherwise the view stays where it is.
            let strategy = if on {
                ScrollStrategy::StickToBottom
            } else {
                ScrollStrategy::KeepRow
            };
            siv.call_on_name(&follow.scroll, |v: &mut ScrollView<NamedView<TextView>>| {
                v.set_scroll_strategy(strategy);
            });
            follow.spawn_refresh(true);
        })
        .on_event('/', move |siv| {
            let current = search.query();
            let l = search.clone();
            prompt(
                siv,
                "Search the log",
                "Text to find (case-insensitive, empty: all):",
                &current,
                move |_, q| {
                    if let Ok(mut v) = l.view.lock() {
                        v.query = q.trim().to_string();
                    }
                    l.spawn_refresh(true);
                },
            );
        })
        .on_event('c', move |_| {
            if let Ok(mut v) = clear.view.lock() {
                v.query.clear();
            }
            clear.spawn_refresh(true);
        })
        .on_event('r', move |_| reload.spawn_refresh(true));
    push_screen(
        siv,
        "Logs",
        view,
        "f follow on/off · / search · c clear search · r reload · ↑/↓ PgUp/PgDn Home/End scroll",
    );
    let me = logs.clone();
    logs.c.spawn(move || async move {
        me.refresh(true).await;
        while me.live.is_live() {
            tokio::time::sleep(FOLLOW_EVERY).await;
            if me.follow() {
                me.refresh(false).await;
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn tail_reads_appends_partial_lines_and_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("server.log");
        std::fs::write(&path, "one\ntwo\nthr").expect("write");
        let mut t = Tail::default();
        assert!(t.read_more(&path).expect("read"));
        assert_eq!(t.lines, ["one", "two"]);
        assert!(!t.read_more(&path).expect("read"), "nothing new");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("open");
        f.write_all(b"ee\nfour\n").expect("append");
        assert!(t.read_more(&path).expect("read"));
        assert_eq!(t.lines, ["one", "two", "three", "four"]);
        // Rotation: a new file under the same name.
        std::fs::remove_file(&path).expect("rm");
        std::fs::write(&path, "fresh\n").expect("write");
        assert!(t.read_more(&path).expect("read"));
        assert_eq!(t.lines, ["fresh"]);
    }

    #[test]
    fn render_filters_case_insensitively() {
        let lines: VecDeque<String> = [
            r#"{"level":"INFO","fields":{"message":"listening"}}"#,
            "2025-01-01T00:00:00Z ERROR x: Boom",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        let (s, n) = render(&lines, "boom");
        assert_eq!(n, 1);
        assert!(s.source().contains("ERROR Boom"), "{}", s.source());
        assert_eq!(render(&lines, "").1, 2);
    }
}
