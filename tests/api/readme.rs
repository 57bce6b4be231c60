//! The documentation is tested like code: README.md, README_zh.md and `docs/**/*.md`.
//!
//! * Every fenced `sh` block marked runnable — a `<!-- example -->` line (the output must be
//!   JSON) or `<!-- example: text -->` (any output) right before the fence — is run. The
//!   examples of the English documents ([`DOCS`], in that order) form one script, run in one
//!   `bash -euo pipefail` against a real daemon with the fake CLI, so a later example can use
//!   what an earlier one created (`$TASK_ID` of docs/api.md, …): `localhost:3000` becomes the
//!   daemon's address, and the fixtures below stand in for what a test cannot reach (the
//!   webhook receiver is a local one; the long task hangs until it is cancelled, as a long real
//!   run would). Each must exit 0; a JSON example must print only JSON values, none of them
//!   `"success": false`.
//! * Every English document has its translation (README_zh.md, `docs/zh/X.md` for
//!   `docs/X.md`), holding exactly the same examples, so the translation cannot drift; the
//!   webhook verification function stands in one English document and the same in its
//!   translation, and is run on a real delivery.
//! * The configuration table of docs/configuration.md and of its translation lists every key of
//!   `config/default.json` with its default, and `config/example.json` loads without unknown
//!   keys.
//! * Every relative link points at an existing file (a `#fragment` at a heading of the
//!   Markdown file), and each README stays short.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::helpers::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// The English documents, in the order their examples run. Every `docs/*.md` is listed (a new
/// document is placed here, after the documents whose examples it relies on).
const DOCS: &[&str] = &[
    "README.md",
    "docs/api.md",
    "docs/configuration.md",
    "docs/operations.md",
    "docs/redis.md",
    "docs/tui.md",
    "docs/testing.md",
    "docs/benchmarks.md",
    "docs/architecture.md",
];
/// Runnable examples of all the documents together: none may be lost in a move.
const MIN_EXAMPLES: usize = 19;
/// The largest README, in bytes: the details belong in `docs/`.
const MAX_README_BYTES: usize = 20_000;
/// The admin key the examples send (`$CCS_API_KEY`).
const API_KEY: &str = "readme-admin-key-0001";
const WEBHOOK_SECRET: &str = "whsec_cmVhZG1lLXdlYmhvb2stc2VjcmV0";

#[derive(Debug, Clone, PartialEq, Eq)]
enum Output {
    Json,
    Text,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Example {
    output: Output,
    code: String,
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(Path::new(ROOT).join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The translation of an English document: README_zh.md, or `docs/zh/X.md` for `docs/X.md`.
fn translation(en: &str) -> String {
    match en.strip_prefix("docs/") {
        Some(name) => format!("docs/zh/{name}"),
        None => en.replace(".md", "_zh.md"),
    }
}

/// The `.md` files directly in `dir` (relative to the root), sorted.
fn markdown_in(dir: &str) -> Vec<String> {
    let mut out: Vec<String> = std::fs::read_dir(Path::new(ROOT).join(dir))
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "md"))
        .map(|p| format!("{dir}/{}", p.file_name().expect("name").to_string_lossy()))
        .collect();
    out.sort();
    out
}

/// The runnable examples of a Markdown document, in order.
fn examples(doc: &str, name: &str) -> Vec<Example> {
    let mut out = Vec::new();
    let mut lines = doc.lines().enumerate();
    while let Some((n, line)) = lines.next() {
        let output = match line.trim() {
            "<!-- example -->" => Output::Json,
            "<!-- example: text -->" => Output::Text,
            l if l.starts_with("<!-- example") => panic!("{name}:{}: unknown marker {l}", n + 1),
            _ => continue,
        };
        let fence = lines.next().map(|(_, l)| l.trim());
        assert_eq!(
            fence,
            Some("```sh"),
            "{name}:{}: a marker must stand right before a ```sh fence",
            n + 1
        );
        let mut code = String::new();
        loop {
            let (_, l) = lines
                .next()
                .unwrap_or_else(|| panic!("{name}:{}: unclosed fence", n + 1));
            if l.trim() == "```" {
                break;
            }
            code.push_str(l);
            code.push('\n');
        }
        out.push(Example { output, code });
    }
    out
}

/// The fenced `python` block that defines `verify_webhook`, if the document has one.
fn verify_snippet(doc: &str) -> Option<String> {
    let start = doc.find("```python\nimport base64, hashlib, hmac, time")?;
    let body = &doc[start + "```python\n".len()..];
    let end = body.find("\n```").expect("closed python fence");
    Some(body[..end + 1].to_string())
}

/// The English document holding the webhook verification snippet, and the snippet.
fn the_verify_snippet() -> (&'static str, String) {
    let found: Vec<(&str, String)> = DOCS
        .iter()
        .filter_map(|name| verify_snippet(&read(name)).map(|s| (*name, s)))
        .collect();
    assert_eq!(
        found.len(),
        1,
        "the webhook verification snippet must stand in exactly one English document: {:?}",
        found.iter().map(|f| f.0).collect::<Vec<_>>()
    );
    found.into_iter().next().expect("one")
}

#[test]
fn every_document_is_listed_and_translated() {
    let listed: Vec<String> = {
        let mut v: Vec<String> = DOCS
            .iter()
            .filter(|d| d.starts_with("docs/"))
            .map(|d| d.to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(
        markdown_in("docs"),
        listed,
        "every docs/*.md is listed in DOCS (tests/api/readme.rs), in the order its examples run"
    );
    let translated: Vec<String> = listed.iter().map(|d| translation(d)).collect();
    assert_eq!(
        markdown_in("docs/zh"),
        translated,
        "docs/zh/ holds the translation of each docs/*.md, and nothing else"
    );
}

#[test]
fn translations_hold_the_same_examples() {
    let mut total = 0;
    for en_name in DOCS {
        let zh_name = translation(en_name);
        let en_ex = examples(&read(en_name), en_name);
        let zh_ex = examples(&read(&zh_name), &zh_name);
        assert_eq!(
            en_ex.len(),
            zh_ex.len(),
            "number of examples in {en_name} and {zh_name}"
        );
        for (i, (a, b)) in en_ex.iter().zip(&zh_ex).enumerate() {
            assert_eq!(
                a,
                b,
                "example {} differs between {en_name} and {zh_name}",
                i + 1
            );
        }
        total += en_ex.len();
    }
    assert!(
        total >= MIN_EXAMPLES,
        "the documents hold {total} runnable examples, fewer than {MIN_EXAMPLES}"
    );
    let (en_name, snippet) = the_verify_snippet();
    let zh_name = translation(en_name);
    assert_eq!(
        verify_snippet(&read(&zh_name)).as_deref(),
        Some(snippet.as_str()),
        "the webhook verification snippets of {en_name} and {zh_name} differ"
    );
}

/// `(documented text, what the test runs instead)`: each must occur in the examples.
fn fixtures(port: u16, receiver: &str) -> Vec<(String, String)> {
    vec![
        ("localhost:3000".into(), format!("127.0.0.1:{port}")),
        ("https://hooks.example.com/claude".into(), receiver.into()),
        (
            "\"Refactor the parser and run the tests\"".into(),
            "\"[[fake:hang]] Refactor the parser and run the tests\"".into(),
        ),
    ]
}

/// What the webhook receiver got: headers (lower-case names) and the raw body.
type Deliveries = Arc<Mutex<Vec<(BTreeMap<String, String>, String)>>>;

async fn receive(State(hits): State<Deliveries>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let headers = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    hits.lock()
        .expect("hits")
        .push((headers, String::from_utf8_lossy(&body).into_owned()));
    StatusCode::NO_CONTENT
}

async fn start_receiver() -> (String, Deliveries, tokio::task::JoinHandle<()>) {
    let hits: Deliveries = Arc::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the receiver");
    let addr = listener.local_addr().expect("address");
    let app = Router::new()
        .route("/claude", post(receive))
        .with_state(hits.clone());
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/claude"), hits, server)
}

/// An example and where it stands (`docs/api.md, example 3`).
struct Located {
    place: String,
    example: Example,
}

/// The examples of every English document, in the order of [`DOCS`].
fn all_examples() -> Vec<Located> {
    DOCS.iter()
        .flat_map(|name| {
            examples(&read(name), name)
                .into_iter()
                .enumerate()
                .map(move |(i, example)| Located {
                    place: format!("{name}, example {}", i + 1),
                    example,
                })
        })
        .collect()
}

/// The examples as one script; each starts by printing `@@example N` on stdout and stderr
/// (`N` counts across the documents; the failure message names the document).
fn script(examples: &[Located], fixtures: &[(String, String)]) -> String {
    let mut s = String::new();
    for (i, e) in examples.iter().enumerate() {
        s.push_str(&format!(
            "printf '\\n@@example {n}\\n'; printf '\\n@@example {n}\\n' >&2\n# {place}\n",
            n = i + 1,
            place = e.place
        ));
        s.push_str(&e.example.code);
    }
    for (from, to) in fixtures {
        assert!(
            s.contains(from.as_str()),
            "no example uses the fixture {from}"
        );
        s = s.replace(from.as_str(), to);
    }
    s
}

/// The stdout of each example, by the `@@example N` lines.
fn split_outputs(stdout: &str) -> BTreeMap<usize, String> {
    let mut out = BTreeMap::new();
    let mut current: Option<usize> = None;
    for line in stdout.lines() {
        if let Some(n) = line.strip_prefix("@@example ") {
            current = n.trim().parse().ok();
            continue;
        }
        if let Some(n) = current {
            let s: &mut String = out.entry(n).or_default();
            s.push_str(line);
            s.push('\n');
        }
    }
    out
}

#[tokio::test]
async fn documented_examples_run_against_a_real_daemon() {
    let examples = all_examples();
    let (receiver, deliveries, receiver_task) = start_receiver().await;
    let app = spawn_app_with(json!({
        "auth": {"apiKeys": [{"name": "readme", "key": API_KEY, "admin": true}]},
        // One slot: the long task holds it, so the next one waits and can be moved and cancelled.
        "taskQueue": {"concurrency": 1},
        "rateLimit": {"maxRequests": 1000},
        "webhook": {"enabled": true, "allowPrivateTargets": true, "secret": WEBHOOK_SECRET,
                    "retries": 0, "timeout": 2000},
    }))
    .await;
    let port: u16 = app
        .address
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("port");
    let script = script(&examples, &fixtures(port, &receiver));
    let script_path = app.dir.path().join("doc-examples.sh");
    std::fs::write(&script_path, &script).expect("write the script");

    let run = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail"])
        .arg(&script_path)
        .current_dir(app.dir.path())
        .env("CCS_API_KEY", API_KEY)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the examples finish within 120 s")
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = || format!("script:\n{script}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    let last = split_outputs(&stdout).keys().last().copied();
    let failed_at = last
        .and_then(|n| examples.get(n - 1))
        .map_or("before the first example", |e| e.place.as_str());
    assert!(
        out.status.success(),
        "an example failed (exit {:?}): {failed_at}\n{}",
        out.status.code(),
        report()
    );

    if std::env::var_os("CCS_README_DEBUG").is_some() {
        eprintln!("{}", report());
    }
    let outputs = split_outputs(&stdout);
    for (i, located) in examples.iter().enumerate() {
        let n = i + 1;
        let place = &located.place;
        let text = outputs.get(&n).map(String::as_str).unwrap_or("");
        assert!(
            !text.trim().is_empty(),
            "{place} printed nothing\n{}",
            report()
        );
        if located.example.output == Output::Json {
            let values: Vec<Value> = serde_json::Deserializer::from_str(text)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| {
                    panic!("{place} printed something else than JSON ({e}): {text}")
                });
            assert!(!values.is_empty(), "{place}: no JSON");
            for v in &values {
                assert_ne!(
                    v.get("success"),
                    Some(&json!(false)),
                    "{place} answered an error: {v}\n{}",
                    report()
                );
            }
        }
    }

    // The webhook example's task was announced to the receiver, signed: the documented
    // verification function accepts the delivery and refuses a changed body.
    let delivery = poll_until(Duration::from_secs(10), || {
        deliveries.lock().expect("hits").first().cloned()
    })
    .await
    .expect("the webhook example's delivery arrives");
    let (snippet_doc, snippet) = the_verify_snippet();
    verify_with_documented_snippet(
        snippet_doc,
        &snippet,
        app.dir.path(),
        &delivery.0,
        &delivery.1,
    )
    .await;

    receiver_task.abort();
    app.shutdown().await;
}

async fn verify_with_documented_snippet(
    doc: &str,
    snippet: &str,
    dir: &Path,
    headers: &BTreeMap<String, String>,
    body: &str,
) {
    let data: PathBuf = dir.join("delivery.json");
    std::fs::write(
        &data,
        json!({"secret": WEBHOOK_SECRET, "headers": headers, "body": body}).to_string(),
    )
    .expect("write the delivery");
    let program = format!(
        "{snippet}\nimport json, sys\nd = json.load(open(sys.argv[1]))\n\
         body = d['body'].encode()\n\
         assert verify_webhook(d['secret'], d['headers'], body), 'a real delivery is refused'\n\
         assert not verify_webhook(d['secret'], d['headers'], body + b' '), 'a changed body passes'\n\
         assert not verify_webhook('whsec_b3RoZXI=', d['headers'], body), 'another secret passes'\n\
         print('verified')\n"
    );
    let out = tokio::process::Command::new("python3")
        .arg("-c")
        .arg(&program)
        .arg(&data)
        .output()
        .await
        .expect("python3 runs");
    assert!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).contains("verified"),
        "verify_webhook of {doc}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(key, default)` rows between the config-table markers.
fn config_table(doc: &str, name: &str) -> Vec<(String, Value)> {
    let start = doc
        .find("<!-- config-table:start -->")
        .unwrap_or_else(|| panic!("{name}: no config-table:start marker"));
    let end = doc
        .find("<!-- config-table:end -->")
        .unwrap_or_else(|| panic!("{name}: no config-table:end marker"));
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            let key = cells[1].trim_matches('`').to_string();
            let default = cells[2]
                .strip_prefix('`')
                .and_then(|c| c.strip_suffix('`'))
                .unwrap_or_else(|| panic!("{name}: the default of {key} is not in backticks"));
            let value: Value = serde_json::from_str(default)
                .unwrap_or_else(|e| panic!("{name}: the default of {key} is not JSON: {e}"));
            (key, value)
        })
        .collect()
}

/// `config/default.json` flattened: nested keys joined with dots; an empty object (a map such
/// as `claudeEnv`) and any non-object value is a leaf.
fn flatten(prefix: &str, v: &Value, out: &mut BTreeMap<String, Value>) {
    match v {
        Value::Object(map) if !map.is_empty() => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        _ => {
            out.insert(prefix.to_string(), v.clone());
        }
    }
}

#[test]
fn the_configuration_tables_list_every_key_with_its_default() {
    let defaults: Value = serde_json::from_str(&read("config/default.json")).expect("JSON");
    let mut want = BTreeMap::new();
    flatten("", &defaults, &mut want);
    let mut tables = Vec::new();
    let en = "docs/configuration.md";
    for name in [en.to_string(), translation(en)] {
        let name = name.as_str();
        let rows = config_table(&read(name), name);
        let mut got = BTreeMap::new();
        for (key, value) in &rows {
            assert!(
                got.insert(key.clone(), value.clone()).is_none(),
                "{name}: {key} is listed twice"
            );
        }
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let unknown: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        assert!(
            missing.is_empty() && unknown.is_empty(),
            "{name}: missing keys {missing:?}, keys not in config/default.json {unknown:?}"
        );
        for (key, value) in &want {
            assert_eq!(&got[key], value, "{name}: the default of {key}");
        }
        tables.push(rows);
    }
    assert_eq!(
        tables[0].iter().map(|r| &r.0).collect::<Vec<_>>(),
        tables[1].iter().map(|r| &r.0).collect::<Vec<_>>(),
        "the two tables list the keys in the same order"
    );
}

/// Every Markdown document: the READMEs (systemd's install guide too) and `docs/**/*.md`.
fn all_documents() -> Vec<String> {
    fn walk(dir: &str, out: &mut Vec<String>) {
        out.extend(markdown_in(dir));
        let mut subdirs: Vec<String> = std::fs::read_dir(Path::new(ROOT).join(dir))
            .unwrap_or_else(|e| panic!("{dir}: {e}"))
            .map(|e| e.expect("directory entry").path())
            .filter(|p| p.is_dir())
            .map(|p| format!("{dir}/{}", p.file_name().expect("name").to_string_lossy()))
            .collect();
        subdirs.sort();
        for d in subdirs {
            walk(&d, out);
        }
    }
    let mut out = vec![
        "README.md".to_string(),
        "README_zh.md".to_string(),
        "systemd/README.md".to_string(),
    ];
    walk("docs", &mut out);
    out
}

/// A document's lines outside fenced code blocks, with inline code spans blanked out.
fn prose_lines(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut fenced = false;
    for line in doc.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if fenced {
            continue;
        }
        let mut prose = String::new();
        for (i, part) in line.split('`').enumerate() {
            if i % 2 == 0 {
                prose.push_str(part);
            }
        }
        out.push(prose);
    }
    out
}

/// The targets of the inline links `[text](target)` of a document.
fn link_targets(doc: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in prose_lines(doc) {
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            let after = &rest[i + 2..];
            let Some(end) = after.find(')') else { break };
            out.push(after[..end].trim().to_string());
            rest = &after[end..];
        }
    }
    out
}

/// The anchors GitHub gives a document's headings: lower case, letters, digits, `-` and `_`
/// kept, spaces as `-`, the rest dropped; a repeated anchor gets `-1`, `-2`, …
fn heading_anchors(doc: &str) -> Vec<String> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for line in doc.lines().scan(false, |fenced, l| {
        if l.trim_start().starts_with("```") {
            *fenced = !*fenced;
            return Some(None);
        }
        Some((!*fenced).then_some(l))
    }) {
        let Some(title) = line.and_then(|l| l.strip_prefix('#')) else {
            continue;
        };
        let title = title.trim_start_matches('#');
        if !title.starts_with(' ') {
            continue;
        }
        let slug: String = title
            .trim()
            .to_lowercase()
            .chars()
            .filter_map(|c| match c {
                ' ' => Some('-'),
                '-' | '_' => Some(c),
                c if c.is_alphanumeric() => Some(c),
                _ => None,
            })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.push(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

#[test]
fn relative_links_point_at_existing_files_and_headings() {
    let mut broken = Vec::new();
    for name in all_documents() {
        let doc = read(&name);
        let dir = Path::new(&name).parent().expect("parent").to_path_buf();
        for target in link_targets(&doc) {
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((p, f)) => (p, Some(f)),
                None => (target.as_str(), None),
            };
            let file = if path.is_empty() {
                PathBuf::from(&name)
            } else {
                dir.join(path)
            };
            let full = Path::new(ROOT).join(&file);
            if !full.exists() {
                broken.push(format!("{name}: {target} (no file {})", file.display()));
                continue;
            }
            if let Some(fragment) = fragment {
                let is_markdown = full.extension().is_some_and(|x| x == "md");
                let text = std::fs::read_to_string(&full).unwrap_or_default();
                if !is_markdown || !heading_anchors(&text).iter().any(|a| a == fragment) {
                    broken.push(format!("{name}: {target} (no such heading)"));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_readmes_stay_short() {
    for name in ["README.md", "README_zh.md"] {
        let bytes = read(name).len();
        assert!(
            bytes <= MAX_README_BYTES,
            "{name} has {bytes} bytes, more than {MAX_README_BYTES}: move details to docs/"
        );
    }
}

#[test]
fn the_example_config_loads_without_unknown_keys() {
    let doc: Value = serde_json::from_str(&read("config/example.json")).expect("JSON");
    let env = actors::config::load::Environment {
        cwd: PathBuf::from("/"),
        ..Default::default()
    };
    let (config, warnings) =
        actors::config::load::from_file_doc(&doc, &env).expect("config/example.json is valid");
    // (A note that no `claude` was found on this machine is fine; an unknown key is not.)
    assert!(
        !warnings.iter().any(|w| w.contains("unknown config key")),
        "{warnings:?}"
    );
    // It is a multi-user example: keys, so it may listen on every interface.
    assert_eq!(config.host, "0.0.0.0");
    assert!(config.auth.api_keys.len() >= 2);
}
