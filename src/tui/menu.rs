//! The main menu: every screen, each with a one-key shortcut shown beside it.

use cursive::traits::{Nameable, Resizable};
use cursive::views::{LinearLayout, OnEventView, Panel, SelectView, TextView};
use cursive::Cursive;

use super::daemon_screen::{self, Action};
use super::widgets::ctx;
use super::{
    api_docs, approvals, dashboard, logs, sessions, settings, statistics, tasks, test_api,
};

/// One line of the menu.
struct Entry {
    key: char,
    label: &'static str,
    open: fn(&mut Cursive),
}

/// The menu, in order. The key table of docs/tui.md mirrors this list.
const ENTRIES: &[Entry] = &[
    Entry {
        key: '1',
        label: "▶ Start the daemon",
        open: |s| daemon_screen::open(s, Action::Start),
    },
    Entry {
        key: '2',
        label: "■ Stop the daemon",
        open: |s| daemon_screen::open(s, Action::Stop),
    },
    Entry {
        key: '3',
        label: "● Daemon status",
        open: |s| daemon_screen::open(s, Action::Status),
    },
    Entry {
        key: 'd',
        label: "Dashboard (live queue, today)",
        open: dashboard::open,
    },
    Entry {
        key: 's',
        label: "Sessions",
        open: sessions::open,
    },
    Entry {
        key: 't',
        label: "Tasks",
        open: tasks::open,
    },
    Entry {
        key: 'v',
        label: "Approvals (pending tool use)",
        open: approvals::open,
    },
    Entry {
        key: 'a',
        label: "Statistics",
        open: statistics::open,
    },
    Entry {
        key: 'l',
        label: "Logs",
        open: logs::open,
    },
    Entry {
        key: 'h',
        label: "API docs",
        open: api_docs::open,
    },
    Entry {
        key: 'c',
        label: "Settings (config file)",
        open: settings::open,
    },
    Entry {
        key: 'p',
        label: "Test API (health, test prompt)",
        open: test_api::open,
    },
];

pub const MENU_NAME: &str = "menu";

/// The bottom layer: the menu. `config_error` is shown when the config could not be read.
pub fn open(siv: &mut Cursive, config_error: Option<String>) {
    let mut select = SelectView::<usize>::new();
    for (i, e) in ENTRIES.iter().enumerate() {
        select.add_item(format!("[{}] {}", e.key, e.label), i);
    }
    select.add_item("[q] Quit", usize::MAX);
    select.set_on_submit(|s, i: &usize| match ENTRIES.get(*i) {
        Some(e) => (e.open)(s),
        None => s.quit(),
    });

    let target = ctx(siv)
        .map(|c| {
            let client = c.client();
            let t = client.target();
            let key = if t.api_key.is_some() {
                "with an API key"
            } else {
                "without an API key"
            };
            format!("daemon: {} ({key})", t.base_url)
        })
        .unwrap_or_default();
    let mut header = format!(
        "claude-code-server {} — operator console\n{target}",
        env!("CARGO_PKG_VERSION")
    );
    if let Some(e) = config_error {
        header.push_str(&format!("\nconfig problem: {e}"));
    }

    let mut view = OnEventView::new(
        LinearLayout::vertical()
            .child(TextView::new(header))
            .child(Panel::new(select.with_name(MENU_NAME)).title("Menu"))
            .child(TextView::new(
                "↑/↓ move · Enter open · key in [ ] = shortcut · q quit",
            )),
    )
    // Esc does not quit: it is "back" everywhere else, and pressing it once too often must
    // not close the console.
    .on_event('q', |s| s.quit());
    for e in ENTRIES {
        view = view.on_event(e.key, e.open);
    }
    siv.add_fullscreen_layer(view.full_screen());
}
