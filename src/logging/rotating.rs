//! The log file: append-only, rotated by size, keeping a number of old files.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;

use super::background::Sink;

/// The renames that rotate `path` keeping `max_files` old files, in the order to perform
/// them: `path.{n-1}` → `path.{n}`, …, `path.1` → `path.2`, `path` → `path.1`. The oldest file
/// (`path.{n}`) is replaced by the first rename.
pub fn rotation_renames(path: &Path, max_files: u32) -> Vec<(PathBuf, PathBuf)> {
    let numbered = |i: u32| {
        let mut s = path.as_os_str().to_owned();
        s.push(format!(".{i}"));
        PathBuf::from(s)
    };
    let mut out = Vec::new();
    for i in (1..max_files).rev() {
        out.push((numbered(i), numbered(i + 1)));
    }
    if max_files >= 1 {
        out.push((path.to_path_buf(), numbered(1)));
    }
    out
}

/// An append-only file rotated when a line would take it past `max_bytes`. The limits are
/// atomics because a config reload changes them while the writer thread writes.
pub struct RotatingFile {
    path: PathBuf,
    max_bytes: AtomicU64,
    max_files: AtomicU32,
    state: Mutex<Open>,
}

struct Open {
    file: Option<File>,
    size: u64,
}

impl RotatingFile {
    pub fn open(path: &Path, max_bytes: u64, max_files: u32) -> std::io::Result<RotatingFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = open_append(path)?;
        let size = file.metadata().map(|m| m.len()).unwrap_or(0);
        Ok(RotatingFile {
            path: path.to_path_buf(),
            max_bytes: AtomicU64::new(max_bytes),
            max_files: AtomicU32::new(max_files),
            state: Mutex::new(Open {
                file: Some(file),
                size,
            }),
        })
    }

    pub fn set_limits(&self, max_bytes: u64, max_files: u32) {
        self.max_bytes.store(max_bytes, Ordering::Relaxed);
        self.max_files.store(max_files, Ordering::Relaxed);
    }

    /// Append whole lines (each ending in `\n`; a last line without one counts as a line):
    /// as few writes as possible, rotating before any line that would take the file past its
    /// limit. A line longer than the limit still goes into a file of its own.
    pub fn write_lines(&self, batch: &[u8]) -> std::io::Result<()> {
        let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let max = self.max_bytes.load(Ordering::Relaxed);
        let mut start = 0;
        while start < batch.len() {
            let first = line_end(batch, start);
            if st.size > 0 && st.size.saturating_add((first - start) as u64) > max {
                self.rotate(&mut st);
            }
            // Every further line that still fits goes into the same write.
            let mut end = first;
            while end < batch.len() {
                let next = line_end(batch, end);
                if st.size.saturating_add((next - start) as u64) > max {
                    break;
                }
                end = next;
            }
            if st.file.is_none() {
                st.file = Some(open_append(&self.path)?);
            }
            let file = st
                .file
                .as_mut()
                .ok_or_else(|| std::io::Error::other("log file not open"))?;
            file.write_all(&batch[start..end])?;
            st.size = st.size.saturating_add((end - start) as u64);
            start = end;
        }
        Ok(())
    }

    fn rotate(&self, st: &mut Open) {
        // A failed rotation keeps appending to the current file: losing log lines would be
        // worse than a file over its limit.
        st.file = None;
        for (from, to) in rotation_renames(&self.path, self.max_files.load(Ordering::Relaxed)) {
            match std::fs::rename(&from, &to) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => eprintln!("claude-code-server: cannot rotate {}: {e}", from.display()),
            }
        }
        st.size = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
    }
}

impl Sink for std::sync::Arc<RotatingFile> {
    fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
        self.write_lines(batch)
    }
}

/// The index just past the line that starts at `start`.
fn line_end(batch: &[u8], start: usize) -> usize {
    batch[start..]
        .iter()
        .position(|&b| b == b'\n')
        .map_or(batch.len(), |i| start + i + 1)
}

fn open_append(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    // Owner only: log lines name keys, tasks and paths.
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotation_renames_oldest_first() {
        let p = Path::new("/l/server.log");
        let names: Vec<(String, String)> = rotation_renames(p, 3)
            .into_iter()
            .map(|(a, b)| (a.display().to_string(), b.display().to_string()))
            .collect();
        assert_eq!(
            names,
            vec![
                ("/l/server.log.2".into(), "/l/server.log.3".into()),
                ("/l/server.log.1".into(), "/l/server.log.2".into()),
                ("/l/server.log".into(), "/l/server.log.1".into()),
            ]
        );
        assert_eq!(rotation_renames(p, 1).len(), 1);
    }

    #[test]
    fn the_file_rotates_at_its_limit_and_keeps_n_files() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("logs/s.log");
        let f = RotatingFile::open(&path, 10, 2).expect("open");
        for line in ["aaaaaaaa\n", "bbbbbbbb\n", "cccccccc\n", "dddddddd\n"] {
            f.write_lines(line.as_bytes()).expect("write");
        }
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&path), "dddddddd\n");
        assert_eq!(read(&dir.path().join("logs/s.log.1")), "cccccccc\n");
        assert_eq!(read(&dir.path().join("logs/s.log.2")), "bbbbbbbb\n");
        assert!(!dir.path().join("logs/s.log.3").exists());
        // A line longer than the limit still goes into a file of its own.
        f.set_limits(4, 2);
        f.write_lines(b"eeeeeeeeeeee\n").expect("write");
        assert_eq!(read(&path), "eeeeeeeeeeee\n");
    }

    #[test]
    fn a_batch_is_split_at_line_boundaries_where_the_limit_falls() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s.log");
        let f = RotatingFile::open(&path, 10, 3).expect("open");
        // 4 + 4 bytes fit in 10; the third line starts a new file, and so do the line longer
        // than the limit and the last one (no newline) after it.
        f.write_lines(b"aaa\nbbb\nccc\nddddddddddddd\nee")
            .expect("write");
        let read = |p: &Path| std::fs::read_to_string(p).unwrap_or_default();
        assert_eq!(read(&dir.path().join("s.log.3")), "aaa\nbbb\n");
        assert_eq!(read(&dir.path().join("s.log.2")), "ccc\n");
        assert_eq!(read(&dir.path().join("s.log.1")), "ddddddddddddd\n");
        assert_eq!(read(&path), "ee");
    }
}
