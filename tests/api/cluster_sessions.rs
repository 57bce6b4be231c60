//! Portable sessions: two instances on one Redis namespace, each with its own CLI config
//! directory (as on two machines) and one shared project directory. A session continued
//! alternately on both keeps its whole history, because the transcript travels through Redis;
//! with the fake CLI, and end to end with the real CLI against the mock Anthropic API.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};
use tempfile::TempDir;

use crate::e2e_real_cli::{cli_env, real_claude};
use crate::helpers::*;
use crate::mock_anthropic::MockAnthropic;
use crate::redis_server::{shared_url, test_namespace};

/// What the instances share: one Redis namespace and the workspace (the same project path on
/// every instance, as docs/redis.md requires).
struct Shared {
    url: String,
    namespace: String,
    workspace: TempDir,
}

impl Shared {
    fn new() -> Shared {
        let workspace = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(workspace.path().join("project")).expect("project dir");
        Shared {
            url: shared_url().unwrap_or_else(|e| panic!("{e}")),
            namespace: test_namespace(),
            workspace,
        }
    }

    fn project(&self) -> PathBuf {
        self.workspace
            .path()
            .canonicalize()
            .expect("canonical workspace")
            .join("project")
    }

    fn config(&self, extra: Value) -> Value {
        let mut config = json!({
            "storageType": "redis",
            "redisUrl": self.url,
            "redisNamespace": self.namespace,
            "defaultProjectPath": self.project().display().to_string(),
            "allowedProjectRoots": [self.project().display().to_string()],
        });
        actors::config::merge::merge_patch(&mut config, &extra);
        config
    }

    async fn instance(&self, extra: Value) -> TestApp {
        spawn_app_in(tempfile::tempdir().expect("tempdir"), self.config(extra)).await
    }
}

/// The session's transcript in an instance's own CLI config directory (see helpers.rs).
fn local_transcript(app: &TestApp, project: &Path, sid: &str) -> PathBuf {
    let root = app.dir.path().canonicalize().expect("canonical tempdir");
    actors::claude::transcript::path(&root.join("claude-home"), project, sid)
}

async fn turn(app: &TestApp, sid: &str, prompt: &str) -> Value {
    let (s, b) = json_body(
        app.post_json(
            &format!("/api/sessions/{sid}/continue"),
            &json!({ "prompt": prompt }),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{prompt}: {b}");
    assert_eq!(b["session_id"], json!(sid), "{b}");
    b
}

/// The (role, text) of the session's text messages as `app` shows them.
async fn texts(app: &TestApp, sid: &str) -> Vec<(String, String)> {
    let (s, m) = json_body(app.get(&format!("/api/sessions/{sid}/messages")).await).await;
    assert_eq!(s, 200, "{m}");
    m["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter(|x| x["type"] == "text")
        .map(|x| {
            (
                x["role"].as_str().unwrap_or("").to_string(),
                x["content"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

fn user_texts(texts: &[(String, String)]) -> Vec<&str> {
    texts
        .iter()
        .filter(|(role, _)| role == "user")
        .map(|(_, t)| t.as_str())
        .collect()
}

#[tokio::test]
async fn a_session_continued_alternately_on_two_instances_keeps_its_history() {
    let shared = Shared::new();
    let a = shared.instance(json!({})).await;
    let project = shared.project();

    let (s, first) = json_body(a.post_claude(json!({"prompt": "one"})).await).await;
    assert_eq!(s, 200, "{first}");
    // B starts after the first turn: any instance may claim a task, and the first turn must
    // run on A for B to need A's transcript.
    let b = shared.instance(json!({})).await;
    assert_eq!(first["result"], "fake reply #1 to: one");
    let sid = first["session_id"]
        .as_str()
        .expect("session id")
        .to_string();
    // B has never seen this session: the fake CLI, like the real one, would answer a resume
    // with "No conversation found" unless the transcript is brought over.
    assert!(!local_transcript(&b, &project, &sid).exists());

    // The fake numbers its reply by the user turns in the transcript it resumed.
    let two = turn(&b, &sid, "two").await;
    assert_eq!(two["result"], "fake reply #2 to: two", "{two}");
    // A's copy now lacks B's turn; the messages endpoint shows the stored, complete one.
    assert_eq!(user_texts(&texts(&a, &sid).await), ["one", "two"]);
    let three = turn(&a, &sid, "three").await;
    assert_eq!(three["result"], "fake reply #3 to: three", "{three}");
    let four = turn(&b, &sid, "four").await;
    assert_eq!(four["result"], "fake reply #4 to: four", "{four}");

    let expected = [
        ("user", "one"),
        ("assistant", "fake reply #1 to: one"),
        ("user", "two"),
        ("assistant", "fake reply #2 to: two"),
        ("user", "three"),
        ("assistant", "fake reply #3 to: three"),
        ("user", "four"),
        ("assistant", "fake reply #4 to: four"),
    ]
    .map(|(r, t)| (r.to_string(), t.to_string()));
    assert_eq!(texts(&a, &sid).await, expected);
    assert_eq!(texts(&b, &sid).await, expected);
    let (_, session) = json_body(a.get(&format!("/api/sessions/{sid}")).await).await;
    assert_eq!(session["session"]["messages_count"], 4, "{session}");

    // A fork on one instance of a session last run on the other starts from all of it, and
    // goes on on the first one.
    let (s, fork) = json_body(
        a.post_json(
            &format!("/api/sessions/{sid}/fork"),
            &json!({"prompt": "branch"}),
        )
        .await,
    )
    .await;
    assert_eq!(s, 200, "{fork}");
    assert_eq!(fork["result"], "fake reply #5 to: branch", "{fork}");
    let child = fork["session_id"].as_str().expect("fork id").to_string();
    let next = turn(&b, &child, "child two").await;
    assert_eq!(next["result"], "fake reply #6 to: child two", "{next}");
    // The parent did not get the fork's turns.
    assert_eq!(
        user_texts(&texts(&b, &sid).await),
        ["one", "two", "three", "four"]
    );

    // Deleted on one instance: gone on both, the stored transcript with it.
    let resp = b
        .client
        .delete(b.url(&format!("/api/sessions/{sid}")))
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status().as_u16(), 200);
    let (s, _) = json_body(a.get(&format!("/api/sessions/{sid}/messages")).await).await;
    assert_eq!(s, 404);

    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn e2e_the_real_cli_sees_the_turns_of_the_other_instance() {
    let mock = MockAnthropic::start().await;
    let shared = Shared::new();
    let mut env = serde_json::Map::new();
    for (k, v) in cli_env(&mock) {
        env.insert(k.to_string(), json!(v));
    }
    // The fake CLI's variables mean nothing to the real one.
    env.insert("FAKE_CLAUDE_LOG".into(), Value::Null);
    env.insert("FAKE_CLAUDE_VERSION".into(), Value::Null);
    let real = json!({
        "claudePath": real_claude().display().to_string(),
        "claudeEnv": env,
    });
    let a = shared.instance(real.clone()).await;
    let project = shared.project();
    let expected =
        |turns: usize| format!("mock reply: turns={turns} first=\"first message DELTA\"");

    let (s, first) = json_body(
        a.post_claude(json!({"prompt": "first message DELTA"}))
            .await,
    )
    .await;
    assert_eq!(s, 200, "{first}");
    assert_eq!(first["result"], expected(1), "{first}");
    // As above: B starts after the first turn, which so ran on A.
    let b = shared.instance(real).await;
    let sid = first["session_id"]
        .as_str()
        .expect("session id")
        .to_string();
    assert!(!local_transcript(&b, &project, &sid).exists());

    let apps = [&b, &a, &b];
    for (i, app) in apps.into_iter().enumerate() {
        let n = i + 2;
        let prompt = format!("turn {n}");
        let answer = turn(app, &sid, &prompt).await;
        assert_eq!(answer["result"], expected(n), "turn {n}: {answer}");
        // The model was sent every earlier turn: the history travelled.
        let last = mock
            .message_requests()
            .into_iter()
            .rfind(|r| r.stream && r.last_user_text() == Some(prompt.as_str()))
            .unwrap_or_else(|| panic!("the mock never saw {prompt:?}"));
        let mut want = vec!["first message DELTA".to_string()];
        want.extend((2..=n).map(|k| format!("turn {k}")));
        assert_eq!(last.user_texts, want, "turn {n}");
    }
    for app in [&a, &b] {
        assert_eq!(
            user_texts(&texts(app, &sid).await),
            ["first message DELTA", "turn 2", "turn 3", "turn 4"]
        );
    }
    a.shutdown().await;
    b.shutdown().await;
}
