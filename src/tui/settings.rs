//! Settings: a form over the main config keys, validated as the daemon validates and saved
//! atomically (the daemon's hot reload picks the file up).
//!
//! The config is a local file of a few KiB, so reading and saving it run on the UI thread:
//! the form and its error message stay in step, and nothing waits on the network.

use cursive::event::Event;
use cursive::theme::{BaseColor, Color};
use cursive::traits::{Nameable, Resizable, Scrollable};
use cursive::utils::markup::StyledString;
use cursive::views::{
    Button, Checkbox, DummyView, EditView, LinearLayout, OnEventView, SelectView, TextView,
};
use cursive::Cursive;

use super::settings_form::{current_inputs, read_file_doc, save, Input, Kind, FIELDS};
use super::widgets::{ctx, push_form_screen, set_text};
use super::worker::unique_name;

/// The field widgets of one open form, by config key.
#[derive(Clone)]
struct Form {
    prefix: String,
    status: String,
}

impl Form {
    fn field_name(&self, key: &str) -> String {
        format!("{}.{key}", self.prefix)
    }

    /// What the form holds now.
    fn inputs(&self, siv: &mut Cursive) -> Vec<(&'static str, Input)> {
        FIELDS
            .iter()
            .filter_map(|f| {
                let name = self.field_name(f.key);
                let input = match f.kind {
                    Kind::Bool => {
                        siv.call_on_name(&name, |c: &mut Checkbox| Input::Bool(c.is_checked()))?
                    }
                    Kind::Choice(_) => siv.call_on_name(&name, |s: &mut SelectView<String>| {
                        Input::Text(s.selection().map(|v| v.to_string()).unwrap_or_default())
                    })?,
                    _ => siv.call_on_name(&name, |e: &mut EditView| {
                        Input::Text(e.get_content().to_string())
                    })?,
                };
                Some((f.key, input))
            })
            .collect()
    }

    fn save(&self, siv: &mut Cursive) {
        let Some(c) = ctx(siv) else { return };
        let inputs = self.inputs(siv);
        match save(&c.control.config_path, &inputs, &c.control.env) {
            Ok(changed) if changed.is_empty() => {
                set_text(siv, &self.status, "Nothing changed.");
            }
            Ok(changed) => {
                let needs_restart = changed.iter().any(|k| k == "port" || k == "host");
                let mut text = format!(
                    "Saved {} ({}). The daemon applies it by hot reload.",
                    c.control.config_path.display(),
                    changed.join(", ")
                );
                if needs_restart {
                    text.push_str(" port/host take effect after a restart (Stop, Start).");
                }
                set_text(
                    siv,
                    &self.status,
                    StyledString::styled(text, Color::Dark(BaseColor::Green)),
                );
                c.refresh_client();
            }
            Err(e) => {
                let text = format!("✖ Not saved — {e}");
                set_text(
                    siv,
                    &self.status,
                    StyledString::styled(text, Color::Dark(BaseColor::Red)),
                );
                // Put the cursor on the field at fault, when it is one of the form's.
                let name = self.field_name(&e.key);
                let _ = siv.focus_name(&name);
            }
        }
    }
}

pub fn open(siv: &mut Cursive) {
    let Some(c) = ctx(siv) else { return };
    let form = Form {
        prefix: unique_name("settings"),
        status: unique_name("settings.status"),
    };
    let (file_doc, load_error) = match read_file_doc(&c.control.config_path) {
        Ok(d) => (d, None),
        Err(e) => (serde_json::json!({}), Some(e.to_string())),
    };
    let mut rows = LinearLayout::vertical();
    for (f, (_, input)) in FIELDS.iter().zip(current_inputs(&file_doc)) {
        let name = form.field_name(f.key);
        let label = TextView::new(format!("{:<26}", f.key)).fixed_width(27);
        let widget: Box<dyn cursive::View> = match (f.kind, input) {
            (Kind::Bool, Input::Bool(b)) => {
                let mut cb = Checkbox::new();
                cb.set_checked(b);
                Box::new(cb.with_name(name).fixed_width(30))
            }
            (Kind::Choice(options), Input::Text(t)) => {
                let mut sel = SelectView::<String>::new().popup();
                for o in options {
                    sel.add_item(*o, o.to_string());
                }
                if let Some(i) = options.iter().position(|o| *o == t) {
                    sel.set_selection(i);
                }
                Box::new(sel.with_name(name).fixed_width(30))
            }
            (_, Input::Text(t)) => {
                Box::new(EditView::new().content(t).with_name(name).fixed_width(30))
            }
            (_, Input::Bool(_)) => Box::new(DummyView),
        };
        rows.add_child(
            LinearLayout::horizontal()
                .child(label)
                .child(widget)
                .child(TextView::new(format!("  {}", f.help))),
        );
    }
    let status_text = load_error
        .map(|e| format!("✖ {e}"))
        .unwrap_or_else(|| format!("Editing {}", c.control.config_path.display()));
    let save_form = form.clone();
    let body = LinearLayout::vertical()
        .child(TextView::new(status_text).with_name(&form.status))
        .child(DummyView)
        .child(rows.scrollable())
        .child(DummyView)
        .child(Button::new("Save (Ctrl+S)", move |s| save_form.save(s)));
    let ctrl_s = form.clone();
    let view = OnEventView::new(body).on_pre_event(Event::CtrlChar('s'), move |s| ctrl_s.save(s));
    push_form_screen(
        siv,
        "Settings",
        view,
        "Tab/↑/↓ move between fields · Space toggles · Ctrl+S save · unsaved edits are dropped on leaving",
    );
}
