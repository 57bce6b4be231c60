//! The building blocks every screen uses: a full-screen frame with its key bindings on show,
//! confirmations, prompts, and messages.

use cursive::event::Key;
use cursive::traits::{Nameable, Resizable, Scrollable};
use cursive::views::{Dialog, EditView, LinearLayout, OnEventView, Panel, TextView};
use cursive::{Cursive, View};

use super::worker::Ctx;

/// The worker context every screen reaches through the Cursive user data.
pub fn ctx(siv: &mut Cursive) -> Option<Ctx> {
    siv.user_data::<Ctx>().cloned()
}

/// Push a full-screen screen: `body` in a titled panel, the key bindings below it. `Esc` and
/// `q` close it (when the focused view does not use the key itself, as an edit field does).
pub fn push_screen(siv: &mut Cursive, title: &str, body: impl View, keys: &str) {
    push(siv, title, body, &format!("{keys}  ·  Esc/q back"), true);
}

/// A screen of edit fields: only `Esc` closes it, so a stray `q` on a checkbox or a button
/// does not throw the edits away.
pub fn push_form_screen(siv: &mut Cursive, title: &str, body: impl View, keys: &str) {
    push(siv, title, body, &format!("{keys}  ·  Esc back"), false);
}

fn push(siv: &mut Cursive, title: &str, body: impl View, footer: &str, q_closes: bool) {
    let layout = LinearLayout::vertical()
        .child(Panel::new(body).title(title).full_height())
        .child(TextView::new(footer));
    let mut view = OnEventView::new(layout).on_event(Key::Esc, close_top);
    if q_closes {
        view = view.on_event('q', close_top);
    }
    siv.add_fullscreen_layer(view.full_screen());
}

pub fn close_top(siv: &mut Cursive) {
    // The main menu is the bottom layer and never closed this way.
    if siv.screen().len() > 1 {
        siv.pop_layer();
    }
}

/// A scrollable text area named `name`.
pub fn text_area(name: &str, initial: &str) -> impl View {
    TextView::new(initial)
        .with_name(name)
        .scrollable()
        .full_screen()
}

/// A message box; Enter or Esc closes it.
pub fn message(siv: &mut Cursive, title: &str, text: impl Into<String>) {
    let dialog = Dialog::around(TextView::new(text.into()))
        .title(title)
        .dismiss_button("OK");
    siv.add_layer(OnEventView::new(dialog).on_event(Key::Esc, |s| {
        s.pop_layer();
    }));
}

/// Ask before doing something that cannot be undone: `y` or the Yes button runs `on_yes`;
/// `n`, Esc or No closes the question.
pub fn confirm(
    siv: &mut Cursive,
    question: impl Into<String>,
    on_yes: impl Fn(&mut Cursive) + Send + Sync + Clone + 'static,
) {
    let yes = on_yes.clone();
    let dialog = Dialog::around(TextView::new(question.into()))
        .title("Confirm")
        .button("No (n)", |s| {
            s.pop_layer();
        })
        .button("Yes (y)", move |s| {
            s.pop_layer();
            yes(s);
        });
    let view = OnEventView::new(dialog)
        .on_event('y', move |s| {
            s.pop_layer();
            on_yes(s);
        })
        .on_event('n', |s| {
            s.pop_layer();
        })
        .on_event(Key::Esc, |s| {
            s.pop_layer();
        });
    siv.add_layer(view);
}

/// Ask for one line of text: Enter submits, Esc cancels.
pub fn prompt(
    siv: &mut Cursive,
    title: &str,
    label: &str,
    initial: &str,
    on_submit: impl Fn(&mut Cursive, &str) + Send + Sync + Clone + 'static,
) {
    let name = super::worker::unique_name("prompt");
    let submit = on_submit.clone();
    let field_name = name.clone();
    let edit = EditView::new()
        .content(initial)
        .on_submit(move |s, text| {
            let text = text.to_string();
            s.pop_layer();
            submit(s, &text);
        })
        .with_name(name)
        .fixed_width(40);
    let dialog = Dialog::around(
        LinearLayout::vertical()
            .child(TextView::new(label))
            .child(edit),
    )
    .title(title)
    .button("Cancel (Esc)", |s| {
        s.pop_layer();
    })
    .button("OK (Enter)", move |s| {
        let text = s
            .call_on_name(&field_name, |e: &mut EditView| e.get_content().to_string())
            .unwrap_or_default();
        s.pop_layer();
        on_submit(s, &text);
    });
    siv.add_layer(OnEventView::new(dialog).on_event(Key::Esc, |s| {
        s.pop_layer();
    }));
}

/// Set the content of the text view called `name`, if it is still open.
pub fn set_text(
    siv: &mut Cursive,
    name: &str,
    content: impl Into<cursive::utils::markup::StyledString>,
) {
    let content = content.into();
    siv.call_on_name(name, move |v: &mut TextView| v.set_content(content));
}
