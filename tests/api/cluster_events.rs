//! Live events across instances: two daemons on one Redis namespace, a run submitted to one,
//! its events (`GET /api/tasks/:id/events`) read on the other, with the same ids, so that
//! `Last-Event-ID` works whichever instance a client reconnects to.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};

use crate::events::{kinds, parse_sse, read_stream, Sse};
use crate::helpers::*;
use crate::redis_server::{shared_url, test_namespace};

async fn instance(url: &str, namespace: &str) -> TestApp {
    spawn_app_in(
        tempfile::tempdir().expect("tempdir"),
        json!({"storageType": "redis", "redisUrl": url, "redisNamespace": namespace}),
    )
    .await
}

async fn submit(app: &TestApp, prompt: &str) -> String {
    app.enqueue(json!({"prompt": prompt})).await
}

async fn events_from(app: &TestApp, id: &str, last_event_id: Option<u64>) -> reqwest::Response {
    let mut req = app.client.get(app.url(&format!("/api/tasks/{id}/events")));
    if let Some(last) = last_event_id {
        req = req.header("Last-Event-ID", last.to_string());
    }
    let resp = req.send().await.expect("send");
    assert_eq!(resp.status().as_u16(), 200);
    resp
}

/// The first `n` events of a stream that is still going (then the connection is dropped).
async fn first_events(resp: reqwest::Response, n: usize) -> Vec<Sse> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    loop {
        let chunk = tokio::time::timeout_at(deadline, body.next()).await;
        let Ok(Some(chunk)) = chunk else {
            panic!("no {n} events in time (or the stream ended): {text:?}");
        };
        text.push_str(&String::from_utf8_lossy(&chunk.expect("chunk")));
        // Only whole events (a block ends with a blank line).
        let whole = text.rfind("\n\n").map_or(0, |i| i + 2);
        let events = parse_sse(&text[..whole]);
        if events.len() >= n {
            return events[..n].to_vec();
        }
    }
}

fn ids(events: &[Sse]) -> Vec<u64> {
    events.iter().filter_map(|e| e.id).collect()
}

#[tokio::test]
async fn a_run_on_one_instance_streams_on_another_with_the_same_events_and_ids() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    let (a, b) = (instance(&url, &ns).await, instance(&url, &ns).await);
    let id = submit(
        &a,
        "[[fake:chunks=5]] [[fake:chunk_ms=100]] [[fake:latency_ms=200]] across instances",
    )
    .await;
    // Both readers from the start, while the run goes on.
    let (on_a, on_b) = tokio::join!(events_from(&a, &id, None), events_from(&b, &id, None));
    let (on_a, on_b) = tokio::join!(read_stream(on_a), read_stream(on_b));
    assert_eq!(on_b, on_a, "B streams A's run exactly as A does");
    let k = kinds(&on_a);
    assert_eq!(k.first(), Some(&"init"), "{k:?}");
    assert_eq!(k.last(), Some(&"result"), "{k:?}");
    let texts: String = on_b
        .iter()
        .filter(|e| e.event == "text")
        .filter_map(|e| e.data["text"].as_str())
        .collect();
    assert!(k.iter().filter(|e| **e == "text").count() >= 2, "{k:?}");
    let result = &on_b.last().expect("result").data;
    assert_eq!(result["result"], json!(texts), "{result}");
    assert_eq!(result["result"], "fake reply #1 to: across instances");
    assert_eq!(result["task_id"], json!(id));
    assert_eq!(ids(&on_b), (1..=on_b.len() as u64).collect::<Vec<_>>());

    // After the end, a client reconnecting to B after event 2 gets only what followed, as it
    // would from A.
    let rest_b = read_stream(events_from(&b, &id, Some(2)).await).await;
    let rest_a = read_stream(events_from(&a, &id, Some(2)).await).await;
    assert_eq!(rest_b, on_a[2..].to_vec());
    assert_eq!(rest_a, rest_b);
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn a_client_reconnecting_to_another_instance_mid_run_gets_only_the_later_events() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    let (a, b) = (instance(&url, &ns).await, instance(&url, &ns).await);
    // About 5 s of text deltas: the client below leaves and comes back while the run goes on.
    let id = submit(
        &a,
        "[[fake:chunks=20]] [[fake:chunk_ms=250]] a long answer arriving in many small pieces",
    )
    .await;
    let on_a = events_from(&a, &id, None).await;
    let seen = first_events(events_from(&b, &id, None).await, 3).await;
    assert_eq!(kinds(&seen), vec!["init", "text", "text"]);
    assert_eq!(ids(&seen), vec![1, 2, 3]);

    // The client went away after event 3 and comes back to B.
    let rest = read_stream(events_from(&b, &id, Some(3)).await).await;
    let on_a = read_stream(on_a).await;
    assert_eq!(
        rest,
        on_a[3..].to_vec(),
        "only what followed event 3, as A sent it"
    );
    assert_eq!(seen, on_a[..3].to_vec());
    assert_eq!(kinds(&rest).last(), Some(&"result"), "{rest:?}");
    let end: &Value = &rest.last().expect("result").data;
    assert_eq!(
        end["result"],
        "fake reply #1 to: a long answer arriving in many small pieces"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test]
async fn another_instance_streams_a_run_live_and_its_end_after_a_cancel() {
    let url = shared_url().unwrap_or_else(|e| panic!("{e}"));
    let ns = test_namespace();
    let (a, b) = (instance(&url, &ns).await, instance(&url, &ns).await);
    // The run prints its init and a first text delta, then waits until it is stopped: what B
    // sends before the cancel below was streamed live, not read after the end.
    let id = submit(&a, "[[fake:hang_after_partial]] [[fake:chunks=3]] hold on").await;
    let seen = first_events(events_from(&b, &id, None).await, 2).await;
    assert_eq!(kinds(&seen), vec!["init", "text"]);
    assert_eq!(ids(&seen), vec![1, 2]);
    let (s, t) = json_body(b.get(&format!("/api/tasks/{id}")).await).await;
    assert_eq!(s, 200, "{t}");
    assert_eq!(t["task"]["status"], "processing", "{t}");

    // A client that saw event 1 comes back to B, then the run is cancelled on A.
    let resumed = events_from(&b, &id, Some(1)).await;
    let (_, resumed) = tokio::join!(
        async {
            let resp = a
                .client
                .delete(a.url(&format!("/api/tasks/{id}")))
                .send()
                .await
                .expect("cancel");
            let (s, body) = json_body(resp).await;
            assert_eq!(s, 200, "{body}");
        },
        read_stream(resumed)
    );
    assert_eq!(kinds(&resumed), vec!["text", "error"], "{resumed:?}");
    assert_eq!(ids(&resumed), vec![2, 3]);
    assert_eq!(resumed[0], seen[1], "the same event on every read");
    assert_eq!(resumed[1].data["code"], "cancelled", "{:?}", resumed[1]);
    let on_a = read_stream(events_from(&a, &id, None).await).await;
    assert_eq!(
        on_a[1..].to_vec(),
        resumed,
        "A, which ran it, has the same log"
    );
    a.shutdown().await;
    b.shutdown().await;
}
