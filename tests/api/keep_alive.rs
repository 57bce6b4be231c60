//! Early refusals and keep-alive: when the server answers before reading the whole body (413,
//! 415, 404 …) and so closes the connection, it says `Connection: close`; otherwise the same
//! connection takes the next request. Driven over a raw socket, as a keep-alive client would.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::helpers::*;

/// One response read off the socket: status, whether it said `Connection: close`.
async fn read_response(sock: &mut TcpStream) -> Option<(u16, bool)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = tokio::time::timeout(Duration::from_secs(10), sock.read(&mut chunk))
            .await
            .expect("the server answers")
            .ok()?;
        if n == 0 {
            return None; // closed
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    Some((status, head.contains("\r\nconnection: close\r\n")))
}

/// Send `first` on a fresh connection, then `GET /health` on the same one. Returns the first
/// answer's status; asserts the rule.
async fn check(app: &TestApp, name: &str, first: &[u8]) -> (u16, bool) {
    let addr = app.address.trim_start_matches("http://");
    let mut sock = TcpStream::connect(addr).await.expect("connect");
    sock.write_all(first).await.expect("write");
    let (status, close) = read_response(&mut sock)
        .await
        .unwrap_or_else(|| panic!("{name}: no answer"));
    let second = sock
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let next = match second {
        Ok(()) => read_response(&mut sock).await,
        Err(_) => None,
    };
    if close {
        assert!(next.is_none(), "{name}: said close but answered again");
    } else {
        assert_eq!(
            next.map(|(s, _)| s),
            Some(200),
            "{name}: {status} without `Connection: close`, then the connection was unusable"
        );
    }
    (status, close)
}

#[tokio::test]
async fn an_early_refusal_says_connection_close_or_keeps_the_connection_usable() {
    let app = spawn_app_with(json!({"limits": {"maxBodyBytes": 1024}})).await;
    let json_head = |len: usize| {
        format!(
            "POST /api/claude HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
        )
    };
    // 413 by the declared length: the body is not read, so the connection must be closed.
    let mut big = json_head(5000).into_bytes();
    big.extend_from_slice(b"{\"prompt\":\"aaaa");
    assert_eq!(check(&app, "413", &big).await, (413, true));
    // 413 while reading a chunked body.
    let mut chunked = b"POST /api/claude HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n800\r\n".to_vec();
    chunked.extend_from_slice(&[b'a'; 2048]);
    chunked.extend_from_slice(b"\r\n");
    assert_eq!(check(&app, "413 chunked", &chunked).await, (413, true));
    // 415 with its body sent: read and dropped, the connection stays usable.
    let small = b"POST /api/claude HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello";
    assert_eq!(check(&app, "415", small).await, (415, false));
    // 415 whose body does not come: answered anyway, and closed.
    let partial = b"POST /api/claude HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 500\r\n\r\nhello";
    assert_eq!(check(&app, "415 partial", partial).await, (415, true));
    // 404 for a POST with a body the server never reads.
    let mut lost = b"POST /api/nowhere HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 900\r\n\r\n".to_vec();
    lost.extend_from_slice(b"{\"a\":1");
    assert_eq!(check(&app, "404", &lost).await, (404, true));
    // A request that was read whole keeps the connection, whatever its answer.
    let body = b"{\"prompt\": \"keep alive\"}";
    let mut ok = json_head(body.len()).into_bytes();
    ok.extend_from_slice(body);
    assert_eq!(check(&app, "200", &ok).await, (200, false));
    let bad = b"{\"prompt\": 1}";
    let mut invalid = json_head(bad.len()).into_bytes();
    invalid.extend_from_slice(bad);
    assert_eq!(check(&app, "400", &invalid).await, (400, false));
    app.shutdown().await;
}
