//! Drive the TUI headless: cursive's puppet backend takes key events and hands back every
//! frame; the test steps the event loop itself and polls the screen for text, with a deadline.
//! Nothing waits by sleeping for the worker: a poll re-checks the screen until the text is
//! there (or the deadline passes, and the screen is printed in the failure).

use std::time::{Duration, Instant};

use cursive::backends::puppet::observed::ObservedScreen;
use cursive::backends::puppet::Backend;
use cursive::event::{Event, Key};
use cursive::reexports::crossbeam_channel::{Receiver, Sender};
use cursive::{Cursive, CursiveRunner, Vec2};

use claude_code_server::daemon::Control;
use claude_code_server::tui::{install, worker::Worker};

const DEADLINE: Duration = Duration::from_secs(20);
/// Between two looks at the screen (the pace of the poll, not a synchronisation).
const POLL: Duration = Duration::from_millis(10);

pub struct Tui {
    runner: CursiveRunner<Cursive>,
    input: Sender<Option<Event>>,
    frames: Receiver<ObservedScreen>,
    last: String,
    // Dropped last: stops the worker thread.
    _worker: Worker,
}

impl Tui {
    pub fn new(control: Control) -> Tui {
        let backend = Backend::init(Some(Vec2::new(120, 40)));
        let input = backend.input();
        let frames = backend.stream();
        let mut siv = Cursive::new();
        let worker = install(&mut siv, control).expect("the TUI installs");
        let runner = siv.into_runner(backend);
        let mut tui = Tui {
            runner,
            input,
            frames,
            last: String::new(),
            _worker: worker,
        };
        tui.wait_for("[q] Quit");
        tui
    }

    /// Send one event and let the UI handle it.
    pub fn press(&mut self, e: impl Into<Event>) {
        self.input.send(Some(e.into())).expect("puppet input");
        self.step();
    }

    pub fn key(&mut self, k: Key) {
        self.press(Event::Key(k));
    }

    pub fn type_text(&mut self, text: &str) {
        for c in text.chars() {
            self.press(Event::Char(c));
        }
    }

    /// Handle pending input and worker callbacks, draw, and keep the newest frame as text.
    fn step(&mut self) {
        self.runner.process_events();
        self.runner.refresh();
        while let Ok(frame) = self.frames.try_recv() {
            self.last = frame_text(&frame);
        }
    }

    /// Poll until `needle` is on screen; returns the screen.
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_until(needle, |s| s.contains(needle))
    }

    /// Poll until every one of `needles` is on screen at once.
    pub fn wait_for_all(&mut self, needles: &[&str]) -> String {
        let what = needles.join(" + ");
        self.wait_until(&what, |s| needles.iter().all(|n| s.contains(n)))
    }

    pub fn wait_until(&mut self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + DEADLINE;
        loop {
            self.step();
            if pred(&self.last) {
                return self.last.clone();
            }
            if Instant::now() >= end {
                panic!(
                    "not on screen within {DEADLINE:?}: {what}\n--- screen ---\n{}",
                    self.last
                );
            }
            std::thread::sleep(POLL);
        }
    }

    pub fn screen(&mut self) -> String {
        self.step();
        self.last.clone()
    }
}

fn frame_text(frame: &ObservedScreen) -> String {
    let size = frame.size();
    let mut out = String::new();
    for y in 0..size.y {
        let mut line = String::new();
        for x in 0..size.x {
            match frame[Vec2::new(x, y)]
                .as_ref()
                .and_then(|c| c.letter.as_option())
            {
                Some(g) => line.push_str(g),
                // Cleared cells and the second half of wide characters.
                None => line.push(' '),
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
