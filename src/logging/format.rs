//! How a log record becomes a line: a JSON object for the log file, readable text for stderr.
//!
//! Both keep the shape of the lines the server wrote before it moved from `tracing` to `log`
//! (the TUI's log screen, `start`'s log tail and operators' tools read them):
//!
//! ```text
//! {"timestamp":"2025-03-04T05:06:07.123456Z","level":"INFO","message":"request","method":"GET","status":200,"target":"access","span":{"request_id":"abc","name":"request"}}
//! 2025-03-04T05:06:07.123456Z  INFO request{request_id=abc}: access: request method=GET status=200
//! ```
//!
//! The message comes first, then the record's key-values in the order the call site wrote
//! them, then the target, then — on the lines of a request — its `x-request-id` as the span
//! `request` (see [`in_request`]). Numbers and booleans stay JSON numbers and booleans; values
//! captured with `:%` or `:?` are strings; a `None` is left out, as `tracing` left it out.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::io::{self, Write};

use log::kv::{self, Key, Value, VisitSource, VisitValue};
use log::{Level, Record};
use serde::ser::{SerializeMap, Serializer};
use uuid::Uuid;

/// The request the current task serves.
struct RequestScope {
    /// Its `x-request-id`.
    id: String,
    /// The task it queued, if any ([`note_task`]).
    task: Cell<Option<Uuid>>,
}

tokio::task_local! {
    static REQUEST: RequestScope;
}

/// Run `fut` as the handling of the request `request_id`: every line it logs, including while
/// it is dropped (a client that went away), names the request. Tasks it spawns do not.
pub async fn in_request<F: Future>(request_id: String, fut: F) -> F::Output {
    let scope = RequestScope {
        id: request_id,
        task: Cell::new(None),
    };
    REQUEST.scope(scope, fut).await
}

/// Call `f` with the request id of the current task, if it serves a request.
pub fn with_request_id<R>(f: impl FnOnce(Option<&str>) -> R) -> R {
    // `try_with` runs its closure only when the task-local is set; otherwise `f` is still here.
    let mut f = Some(f);
    if let Ok(Some(r)) = REQUEST.try_with(|r| f.take().map(|f| f(Some(r.id.as_str())))) {
        return r;
    }
    match f {
        Some(f) => f(None),
        None => unreachable!("the request id was found but gave no result"),
    }
}

/// The request the current task serves queued the task `id`. Its run's lines name the task
/// (they are written elsewhere, outside the request); the request's access line names it too,
/// which links the two.
pub fn note_task(id: Uuid) {
    let _ = REQUEST.try_with(|r| r.task.set(Some(id)));
}

/// The task the current request queued ([`note_task`]), if any.
pub fn noted_task() -> Option<Uuid> {
    REQUEST.try_with(|r| r.task.get()).ok().flatten()
}

/// The time of a line as both formats write it: RFC 3339, UTC, microseconds.
pub fn timestamp() -> impl fmt::Display {
    // Not `format("%Y-…")`: that parses its pattern again for every line.
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// One JSON line (with its `\n`).
pub fn json_line(
    out: &mut dyn Write,
    timestamp: &dyn fmt::Display,
    record: &Record<'_>,
    request_id: Option<&str>,
) -> io::Result<()> {
    let mut ser = serde_json::Serializer::new(&mut *out);
    let mut map = ser.serialize_map(None)?;
    map.serialize_entry("timestamp", &Displayed(timestamp))?;
    map.serialize_entry("level", record.level().as_str())?;
    map.serialize_entry("message", record.args())?;
    let mut fields = JsonFields {
        map: &mut map,
        error: None,
    };
    let _ = record.key_values().visit(&mut fields);
    if let Some(e) = fields.error {
        return Err(e.into());
    }
    map.serialize_entry("target", record.target())?;
    if let Some(id) = request_id {
        map.serialize_entry("span", &RequestSpan(id))?;
    }
    SerializeMap::end(map)?;
    out.write_all(b"\n")
}

/// One readable line (with its `\n`), coloured for a terminal when `ansi`.
pub fn text_line(
    out: &mut dyn Write,
    timestamp: &dyn fmt::Display,
    record: &Record<'_>,
    request_id: Option<&str>,
    ansi: bool,
) -> io::Result<()> {
    let style = |code: &'static str| if ansi { code } else { "" };
    let (dim, italic, reset) = (style(DIM), style(ITALIC), style(RESET));
    let colour = style(level_colour(record.level()));
    write!(
        out,
        "{dim}{timestamp}{reset} {colour}{:>5}{reset} ",
        record.level().as_str()
    )?;
    if let Some(id) = request_id {
        write!(
            out,
            "{}request{reset}{{request_id={id}}}{dim}:{reset} ",
            style(BOLD)
        )?;
    }
    write!(out, "{dim}{}:{reset} {}", record.target(), record.args())?;
    let mut fields = TextFields {
        out: &mut *out,
        names: (italic, dim, reset),
        error: None,
    };
    let _ = record.key_values().visit(&mut fields);
    if let Some(e) = fields.error {
        return Err(e);
    }
    out.write_all(b"\n")
}

const DIM: &str = "\x1b[2m";
const BOLD: &str = "\x1b[1m";
const ITALIC: &str = "\x1b[3m";
const RESET: &str = "\x1b[0m";

fn level_colour(level: Level) -> &'static str {
    match level {
        Level::Error => "\x1b[31m",
        Level::Warn => "\x1b[33m",
        Level::Info => "\x1b[32m",
        Level::Debug => "\x1b[34m",
        Level::Trace => "\x1b[35m",
    }
}

/// A key-value's value, sorted by the JSON it becomes.
enum Field<'v> {
    /// `None`: the field is left out.
    Null,
    U64(u64),
    I64(i64),
    U128(u128),
    I128(i128),
    F64(f64),
    Bool(bool),
    Char(char),
    Str(&'v str),
    /// Captured with `:%` or `:?` (or a type the visitor does not name): its `Display`.
    Text,
}

/// The `VisitValue` methods that keep a primitive as its own `Field`.
macro_rules! keep_primitives {
    ($($method:ident($ty:ty) => $variant:ident),* $(,)?) => {$(
        fn $method(&mut self, v: $ty) -> Result<(), kv::Error> {
            self.0 = Field::$variant(v);
            Ok(())
        }
    )*};
}

impl<'v> Field<'v> {
    fn of(value: &Value<'v>) -> Field<'v> {
        struct Sort<'v>(Field<'v>);
        impl<'v> VisitValue<'v> for Sort<'v> {
            fn visit_any(&mut self, _: Value<'_>) -> Result<(), kv::Error> {
                self.0 = Field::Text;
                Ok(())
            }
            fn visit_null(&mut self) -> Result<(), kv::Error> {
                self.0 = Field::Null;
                Ok(())
            }
            // A string that does not live as long as the value is written from its
            // `Display`, which is the string itself.
            fn visit_str(&mut self, _: &str) -> Result<(), kv::Error> {
                self.0 = Field::Text;
                Ok(())
            }
            keep_primitives! {
                visit_u64(u64) => U64,
                visit_i64(i64) => I64,
                visit_u128(u128) => U128,
                visit_i128(i128) => I128,
                visit_f64(f64) => F64,
                visit_bool(bool) => Bool,
                visit_char(char) => Char,
                visit_borrowed_str(&'v str) => Str,
            }
        }
        let mut sort = Sort(Field::Text);
        let _ = value.visit(&mut sort);
        sort.0
    }
}

/// Writes each key-value into the JSON object.
struct JsonFields<'a, M> {
    map: &'a mut M,
    error: Option<serde_json::Error>,
}

impl<'kvs, M: SerializeMap<Error = serde_json::Error>> VisitSource<'kvs> for JsonFields<'_, M> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let k = key.as_str();
        let written = match Field::of(&value) {
            Field::Null => Ok(()),
            Field::U64(v) => self.map.serialize_entry(k, &v),
            Field::I64(v) => self.map.serialize_entry(k, &v),
            Field::U128(v) => self.map.serialize_entry(k, &v),
            Field::I128(v) => self.map.serialize_entry(k, &v),
            Field::F64(v) => self.map.serialize_entry(k, &v),
            Field::Bool(v) => self.map.serialize_entry(k, &v),
            Field::Char(v) => self.map.serialize_entry(k, &v),
            Field::Str(v) => self.map.serialize_entry(k, v),
            Field::Text => self.map.serialize_entry(k, &Displayed(&value)),
        };
        written.map_err(|e| {
            self.error = Some(e);
            kv::Error::msg("cannot write a field")
        })
    }
}

/// Writes each key-value as ` key=value`; strings quoted, as `tracing` wrote them.
struct TextFields<'a> {
    out: &'a mut dyn Write,
    /// The styles of a field's name, its `=`, and the reset after each.
    names: (&'static str, &'static str, &'static str),
    error: Option<io::Error>,
}

impl<'kvs> VisitSource<'kvs> for TextFields<'_> {
    fn visit_pair(&mut self, key: Key<'kvs>, value: Value<'kvs>) -> Result<(), kv::Error> {
        let (italic, dim, reset) = self.names;
        let field = Field::of(&value);
        if matches!(field, Field::Null) {
            return Ok(());
        }
        let mut written = write!(self.out, " {italic}{key}{reset}{dim}={reset}");
        if written.is_ok() {
            written = match field {
                Field::Str(s) => write!(self.out, "{s:?}"),
                _ => write!(self.out, "{value}"),
            };
        }
        written.map_err(|e| {
            self.error = Some(e);
            kv::Error::msg("cannot write a field")
        })
    }
}

/// Serializes a `Display` as a JSON string, escaped as it is written (no allocation).
struct Displayed<'a, T: ?Sized>(&'a T);

impl<T: fmt::Display + ?Sized> serde::Serialize for Displayed<'_, T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self.0)
    }
}

/// `{"request_id":…,"name":"request"}`: the span `tracing` wrote for a request.
struct RequestSpan<'a>(&'a str);

impl serde::Serialize for RequestSpan<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(2))?;
        map.serialize_entry("request_id", self.0)?;
        map.serialize_entry("name", "request")?;
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIME: &str = "2025-03-04T05:06:07.123456Z";

    /// Log one record with key-values through `line`, inside a request when `request_id`.
    fn render(
        level: Level,
        request_id: Option<&str>,
        line: impl Fn(&mut Vec<u8>, &Record<'_>, Option<&str>),
    ) -> String {
        let (status, id, code, missing): (u16, _, _, Option<u64>) =
            (200, uuid::Uuid::nil(), Some(404), None);
        let kvs: [(&str, Value<'_>); 7] = [
            ("task_id", Value::from_display(&id)),
            ("status", Value::from(status)),
            ("cost_usd", Value::from(0.5)),
            ("gave_up", Value::from(false)),
            ("key", Value::from("-")),
            ("code", Value::from_debug(&code)),
            ("retry", missing.map_or_else(Value::null, Value::from)),
        ];
        let mut out = Vec::new();
        let mut write = |found: Option<&str>| {
            assert_eq!(found, request_id);
            line(
                &mut out,
                &Record::builder()
                    .level(level)
                    .target("actors::queue::worker")
                    .args(format_args!("run {} \"ended\"", 1))
                    .key_values(&kvs)
                    .build(),
                found,
            )
        };
        match request_id {
            Some(id) => {
                let scope = RequestScope {
                    id: id.to_string(),
                    task: Cell::new(None),
                };
                REQUEST.sync_scope(scope, || with_request_id(&mut write))
            }
            None => with_request_id(&mut write),
        }
        String::from_utf8(out).expect("utf-8")
    }

    fn json(request_id: Option<&str>) -> String {
        render(Level::Info, request_id, |out, record, id| {
            json_line(out, &TIME, record, id).expect("json line");
        })
    }

    #[test]
    fn a_json_line_has_the_keys_and_order_of_the_tracing_lines() {
        let line = json(Some("req-1"));
        assert_eq!(
            line,
            concat!(
                r#"{"timestamp":"2025-03-04T05:06:07.123456Z","level":"INFO","#,
                r#""message":"run 1 \"ended\"","task_id":"00000000-0000-0000-0000-000000000000","#,
                r#""status":200,"cost_usd":0.5,"gave_up":false,"key":"-","code":"Some(404)","#,
                r#""target":"actors::queue::worker","span":{"request_id":"req-1","name":"request"}}"#,
                "\n"
            )
        );
        // What the TUI makes of it.
        let entry = crate::tui::log_format::parse(&line);
        assert_eq!(entry.message, "run 1 \"ended\"");
        assert_eq!(entry.level.as_deref(), Some("INFO"));
        assert!(entry.fields.contains(&("status".into(), "200".into())));
    }

    #[test]
    fn outside_a_request_there_is_no_span() {
        let line = json(None);
        let v: serde_json::Value = serde_json::from_str(&line).expect("json");
        assert!(v.get("span").is_none(), "{line}");
        assert_eq!(v["target"], "actors::queue::worker");
        assert!(line.ends_with("}\n"), "{line}");
    }

    #[test]
    fn a_text_line_reads_like_the_tracing_lines() {
        let line = render(Level::Warn, Some("req-1"), |out, record, id| {
            text_line(out, &TIME, record, id, false).expect("text line");
        });
        assert_eq!(
            line,
            "2025-03-04T05:06:07.123456Z  WARN request{request_id=req-1}: actors::queue::worker: \
             run 1 \"ended\" task_id=00000000-0000-0000-0000-000000000000 status=200 \
             cost_usd=0.5 gave_up=false key=\"-\" code=Some(404)\n"
        );
        let entry = crate::tui::log_format::parse(&line);
        assert_eq!(entry.level.as_deref(), Some("WARN"));
        let coloured = render(Level::Error, None, |out, record, id| {
            text_line(out, &TIME, record, id, true).expect("text line");
        });
        assert!(coloured.contains("\x1b[31mERROR\x1b[0m"), "{coloured:?}");
        let entry = crate::tui::log_format::parse(&coloured);
        assert_eq!(entry.target.as_deref(), Some("actors::queue::worker"));
    }

    #[test]
    fn the_timestamp_has_microseconds() {
        let t = timestamp().to_string();
        assert_eq!(t.len(), TIME.len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[19] == b'.', "{t}");
    }
}
