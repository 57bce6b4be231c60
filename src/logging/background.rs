//! Log lines written by a thread of their own, in batches.
//!
//! Why: writing each line with its own `write(2)` — one to the log file, one to stderr — on
//! the thread that logged it cost about 30 of the 50 µs of CPU a `GET /health` took (measured
//! with `wrk`; 50 → 20 µs per request with logging off). Now a line costs its request one
//! copy into a shared buffer, and a wake-up only when the writer sleeps; a thread per
//! destination waits [`LINGER`] after the first line, then writes everything that arrived in
//! one `write(2)`. A line reaches its file at most about [`LINGER`] late.
//!
//! Nothing is dropped: when [`MAX_BUFFERED`] bytes wait, a logging thread waits for room (the
//! writer drains at disk speed). What a `kill -9` or a power cut catches in the buffer is lost,
//! as it would be in the page cache; [`Background::flush`] before a normal exit writes it.

use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Bytes that may wait for the writer thread before a logging thread waits for room.
pub const MAX_BUFFERED: usize = 1 << 20;

/// How long the writer lets lines gather after the first one: a batch costs its thread two
/// context switches (the wake, the linger), so the longer, the fewer per line. Under load that
/// is hundreds of lines per write. At 1 ms, a queue draining ~800 runs/s (two lines each)
/// woke each writer thread about once per run; at 10 ms, about once per eight runs (counted
/// per thread by `ccs-bench`'s drain). Nobody reads a log 10 ms sooner; a quiet server pays
/// that delay, no CPU.
const LINGER: Duration = Duration::from_millis(10);

/// A spare buffer keeps at most this much capacity between batches, so a burst of logging
/// does not keep its memory.
const KEEP_CAPACITY: usize = 64 << 10;

/// Where a writer thread puts its batches.
pub trait Sink: Send + 'static {
    /// Write whole lines. An error loses this batch only (as a failed `write` lost its line
    /// before); the next batch is tried again.
    fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()>;
}

/// Standard error, for the human-readable lines of a foreground server.
pub struct Stderr;

impl Sink for Stderr {
    fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
        std::io::stderr().lock().write_all(batch)
    }
}

/// The logging side of one writer thread. Cloning shares the thread.
#[derive(Clone)]
pub struct Background {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// The writer waits here for lines.
    lines: Condvar,
    /// Logging threads wait here for room, and `flush` for an empty buffer.
    room: Condvar,
}

#[derive(Default)]
struct State {
    buf: Vec<u8>,
    /// The writer holds a batch it has not finished writing.
    writing: bool,
    /// The writer sleeps until a line comes (only then does a logger wake it: a futex wake
    /// per line would cost more than the write it saves).
    idle: bool,
    /// Threads waiting on `room` (loggers facing a full buffer, `flush`).
    waiting: usize,
}

impl Background {
    /// Start the writer thread for `sink`.
    pub fn spawn(name: &str, mut sink: impl Sink) -> std::io::Result<Background> {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            lines: Condvar::new(),
            room: Condvar::new(),
        });
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                let mut batch = Vec::new();
                loop {
                    {
                        let mut st = theirs.lock();
                        st.writing = false;
                        while st.buf.is_empty() {
                            if st.waiting > 0 {
                                // Wakes `flush`: everything logged so far is written.
                                theirs.room.notify_all();
                            }
                            st.idle = true;
                            st = theirs.lines.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                        st.idle = false;
                    }
                    std::thread::sleep(LINGER);
                    let mut st = theirs.lock();
                    std::mem::swap(&mut st.buf, &mut batch);
                    st.writing = true;
                    let wake = st.waiting > 0;
                    drop(st);
                    if wake {
                        theirs.room.notify_all();
                    }
                    let _ = sink.write_batch(&batch);
                    batch.clear();
                    batch.shrink_to(KEEP_CAPACITY);
                }
            })?;
        Ok(Background { shared })
    }

    /// Queue one line (or several whole lines) for the writer.
    pub fn push(&self, line: &[u8]) {
        let shared = &self.shared;
        let mut st = shared.lock();
        while st.buf.len() >= MAX_BUFFERED {
            st.waiting += 1;
            st = shared.room.wait(st).unwrap_or_else(|p| p.into_inner());
            st.waiting -= 1;
        }
        st.buf.extend_from_slice(line);
        // A busy writer looks at the buffer again when done; only a sleeping one needs a
        // wake-up, once.
        let wake = std::mem::take(&mut st.idle);
        drop(st);
        if wake {
            shared.lines.notify_one();
        }
    }

    /// Wait until every line pushed so far is written, or `timeout` passed (a stuck disk must
    /// not hold the exit). Returns whether everything was written.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut st = self.shared.lock();
        while !st.buf.is_empty() || st.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            st.waiting += 1;
            st = self
                .shared
                .room
                .wait_timeout(st, left)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
            st.waiting -= 1;
        }
        true
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The `io::Write` behind an env_logger's `Target::Pipe`: env_logger writes each whole
/// formatted line in one call, which becomes one [`Background::push`].
pub struct LineWriter(pub Background);

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.push(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Collects batches; optionally blocks every write until the test lets it go.
    #[derive(Clone, Default)]
    struct Collect {
        batches: Arc<Mutex<Vec<Vec<u8>>>>,
        gate: Arc<(Mutex<bool>, Condvar)>,
    }

    impl Collect {
        fn gated() -> Collect {
            let c = Collect::default();
            *c.gate.0.lock().expect("gate") = true;
            c
        }

        fn open_gate(&self) {
            *self.gate.0.lock().expect("gate") = false;
            self.gate.1.notify_all();
        }

        fn written(&self) -> Vec<u8> {
            self.batches.lock().expect("batches").concat()
        }
    }

    impl Sink for Collect {
        fn write_batch(&mut self, batch: &[u8]) -> std::io::Result<()> {
            let (closed, cv) = &*self.gate;
            let mut g = closed.lock().expect("gate");
            while *g {
                g = cv.wait(g).expect("gate");
            }
            self.batches.lock().expect("batches").push(batch.to_vec());
            Ok(())
        }
    }

    #[test]
    fn every_line_is_written_in_order_and_flush_waits_for_them() {
        let sink = Collect::default();
        let bg = Background::spawn("test-log", sink.clone()).expect("spawn");
        let mut want = Vec::new();
        for i in 0..10_000 {
            let line = format!("line {i}\n");
            bg.push(line.as_bytes());
            want.extend_from_slice(line.as_bytes());
        }
        assert!(bg.flush(Duration::from_secs(10)), "flush timed out");
        assert_eq!(sink.written(), want);
    }

    #[test]
    fn lines_that_arrive_during_a_write_go_out_together() {
        let sink = Collect::gated();
        let bg = Background::spawn("test-log", sink.clone()).expect("spawn");
        bg.push(b"first\n");
        // Wait until the writer holds "first" (blocked at the gate), then log three more.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !bg.shared.lock().writing {
            assert!(Instant::now() < deadline, "the writer never took the line");
            std::thread::yield_now();
        }
        for line in ["a\n", "b\n", "c\n"] {
            bg.push(line.as_bytes());
        }
        assert!(
            !bg.flush(Duration::from_millis(50)),
            "flushed past a blocked write"
        );
        sink.open_gate();
        assert!(bg.flush(Duration::from_secs(10)), "flush timed out");
        let batches = sink.batches.lock().expect("batches").clone();
        assert_eq!(batches, vec![b"first\n".to_vec(), b"a\nb\nc\n".to_vec()]);
    }

    #[test]
    fn a_full_buffer_makes_the_logger_wait_instead_of_dropping() {
        let sink = Collect::gated();
        let bg = Background::spawn("test-log", sink.clone()).expect("spawn");
        let line = vec![b'x'; 4096];
        let pusher = {
            let bg = bg.clone();
            let line = line.clone();
            std::thread::spawn(move || {
                // The writer can hold one full buffer and the buffer another: a third must
                // wait for the writer.
                for _ in 0..(3 * MAX_BUFFERED / line.len()) {
                    bg.push(&line);
                }
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while bg.shared.lock().buf.len() < MAX_BUFFERED {
            assert!(Instant::now() < deadline, "the buffer never filled");
            std::thread::yield_now();
        }
        assert!(!pusher.is_finished(), "the logger went past a full buffer");
        sink.open_gate();
        pusher.join().expect("pusher");
        assert!(bg.flush(Duration::from_secs(10)), "flush timed out");
        assert_eq!(sink.written().len(), 3 * MAX_BUFFERED);
    }
}
