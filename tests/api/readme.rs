//! The READMEs are tested like code.
//!
//! * Every fenced `sh` block marked runnable — a `<!-- example -->` line (the output must be
//!   JSON) or `<!-- example: text -->` (any output) right before the fence — is run, in the
//!   order of the document, in one `bash -euo pipefail` against a real daemon with the fake CLI:
//!   `localhost:3000` becomes the daemon's address, and the fixtures below stand in for what a
//!   test cannot reach (the webhook receiver is a local one; the long task hangs until it is
//!   cancelled, as a long real run would). Each must exit 0; a JSON example must print only
//!   JSON values, none of them `"success": false`.
//! * README_zh.md must hold exactly the same examples (and the same webhook verification
//!   function), so the translation cannot drift; that function is run on a real delivery.
//! * The configuration table of each README must list every key of `config/default.json`
//!   with its default, and `config/example.json` must load without unknown keys.

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

/// The fenced `python` block that defines `verify_webhook`.
fn verify_snippet(doc: &str, name: &str) -> String {
    let start = doc
        .find("```python\nimport base64, hashlib, hmac, time")
        .unwrap_or_else(|| panic!("{name}: the webhook verification snippet is missing"));
    let body = &doc[start + "```python\n".len()..];
    let end = body.find("\n```").expect("closed python fence");
    body[..end + 1].to_string()
}

#[test]
fn both_readmes_hold_the_same_examples() {
    let en = read("README.md");
    let zh = read("README_zh.md");
    let (en_ex, zh_ex) = (examples(&en, "README.md"), examples(&zh, "README_zh.md"));
    assert!(en_ex.len() >= 15, "README.md has {} examples", en_ex.len());
    assert_eq!(en_ex.len(), zh_ex.len(), "number of examples");
    for (i, (a, b)) in en_ex.iter().zip(&zh_ex).enumerate() {
        assert_eq!(
            a,
            b,
            "example {} differs between README.md and README_zh.md",
            i + 1
        );
    }
    assert_eq!(
        verify_snippet(&en, "README.md"),
        verify_snippet(&zh, "README_zh.md"),
        "the webhook verification snippets differ"
    );
}

/// `(README text, what the test runs instead)`: each must occur in the examples.
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

/// The examples as one script; each starts by printing `@@example N` on stdout and stderr.
fn script(examples: &[Example], fixtures: &[(String, String)]) -> String {
    let mut s = String::new();
    for (i, e) in examples.iter().enumerate() {
        s.push_str(&format!(
            "printf '\\n@@example {n}\\n'; printf '\\n@@example {n}\\n' >&2\n",
            n = i + 1
        ));
        s.push_str(&e.code);
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
async fn readme_examples_run_against_a_real_daemon() {
    let doc = read("README.md");
    let examples = examples(&doc, "README.md");
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
    let script_path = app.dir.path().join("readme-examples.sh");
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
    assert!(
        out.status.success(),
        "an example failed (exit {:?}; the last @@example line names it)\n{}",
        out.status.code(),
        report()
    );

    if std::env::var_os("CCS_README_DEBUG").is_some() {
        eprintln!("{}", report());
    }
    let outputs = split_outputs(&stdout);
    for (i, example) in examples.iter().enumerate() {
        let n = i + 1;
        let text = outputs.get(&n).map(String::as_str).unwrap_or("");
        assert!(
            !text.trim().is_empty(),
            "example {n} printed nothing\n{}",
            report()
        );
        if example.output == Output::Json {
            let values: Vec<Value> = serde_json::Deserializer::from_str(text)
                .into_iter::<Value>()
                .collect::<Result<_, _>>()
                .unwrap_or_else(|e| {
                    panic!("example {n} printed something else than JSON ({e}): {text}")
                });
            assert!(!values.is_empty(), "example {n}: no JSON");
            for v in &values {
                assert_ne!(
                    v.get("success"),
                    Some(&json!(false)),
                    "example {n} answered an error: {v}\n{}",
                    report()
                );
            }
        }
    }

    // The webhook example's task was announced to the receiver, signed: the README's
    // verification function accepts the delivery and refuses a changed body.
    let delivery = poll_until(Duration::from_secs(10), || {
        deliveries.lock().expect("hits").first().cloned()
    })
    .await
    .expect("the webhook example's delivery arrives");
    verify_with_readme_snippet(&doc, app.dir.path(), &delivery.0, &delivery.1).await;

    receiver_task.abort();
    app.shutdown().await;
}

async fn verify_with_readme_snippet(
    doc: &str,
    dir: &Path,
    headers: &BTreeMap<String, String>,
    body: &str,
) {
    let snippet = verify_snippet(doc, "README.md");
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
        "the README's verify_webhook: {}{}",
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
    for name in ["README.md", "README_zh.md"] {
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
