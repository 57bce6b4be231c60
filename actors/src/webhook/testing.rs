//! A webhook receiver for the tests: a bare HTTP/1.1 server on 127.0.0.1 (port 0) that records
//! every request and answers a scripted status, a redirect, or nothing at all.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Hit {
    pub method: String,
    /// Lower-case names.
    pub headers: HashMap<String, String>,
    pub body: String,
}

impl Hit {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).map(String::as_str).unwrap_or("")
    }
}

#[derive(Default)]
struct State {
    hits: Mutex<Vec<Hit>>,
    /// Statuses to answer first, in order; then `status`.
    script: Mutex<VecDeque<u16>>,
    status: AtomicU16,
    /// Answer 307 to this URL.
    location: Mutex<Option<String>>,
    /// Record the request, never answer.
    hang: AtomicBool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("the receiver's address");
        let state = Arc::new(State::default());
        state.status.store(200, Ordering::SeqCst);
        let shared = state.clone();
        let server = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Receiver {
            addr,
            state,
            server,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn script(&self, codes: &[u16]) {
        lock(&self.state.script).extend(codes.iter().copied());
    }

    pub fn redirect_to(&self, url: &str) {
        *lock(&self.state.location) = Some(url.to_owned());
    }

    pub fn hang(&self) {
        self.state.hang.store(true, Ordering::SeqCst);
    }

    pub fn hits(&self) -> Vec<Hit> {
        lock(&self.state.hits).clone()
    }

    /// Wait (10 s at most) until `n` requests have arrived.
    pub async fn wait_for_hits(&self, n: usize) -> Vec<Hit> {
        for _ in 0..1000 {
            let hits = self.hits();
            if hits.len() >= n {
                return hits;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("{n} webhook request(s) did not arrive: {:?}", self.hits());
    }
}

async fn serve(mut stream: TcpStream, state: Arc<State>) {
    let Some(hit) = read_request(&mut stream).await else {
        return;
    };
    lock(&state.hits).push(hit);
    if state.hang.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let location = lock(&state.location).clone();
    let answer = match location {
        Some(url) => format!("HTTP/1.1 307 Temporary Redirect\r\nlocation: {url}\r\n"),
        None => {
            let code = lock(&state.script)
                .pop_front()
                .unwrap_or_else(|| state.status.load(Ordering::SeqCst));
            format!("HTTP/1.1 {code} Scripted\r\n")
        }
    };
    let answer = answer + "content-length: 0\r\nconnection: close\r\n\r\n";
    let _ = stream.write_all(answer.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The head and the `content-length` body of one request.
async fn read_request(stream: &mut TcpStream) -> Option<Hit> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let method = lines.next()?.split(' ').next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let end = buf.len().min(head_end + length);
    Some(Hit {
        method,
        headers,
        body: String::from_utf8_lossy(&buf[head_end..end]).into_owned(),
    })
}
