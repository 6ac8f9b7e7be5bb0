//! A kv-reader's Redis-protocol port seen from raw sockets: what no client library sends (idle
//! connections, requests a byte at a time) and answers timed to the millisecond.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::broker::Broker;
use crate::oidc::OidcProvider;
use crate::services::{service_env, Service};

/// Both services on `topic` with auth on through `idp` (`kv:read` reads, `kv:write` writes) and
/// the reader's Redis-protocol port on an ephemeral port.
pub fn resp_env_with_auth(
    broker: &Broker,
    topic: &str,
    idp: &OidcProvider,
) -> Vec<(&'static str, String)> {
    let mut env = service_env(broker, topic);
    env.retain(|(name, _)| *name != "KV_API_DISABLE_API_AUTH");
    env.extend(idp.service_env());
    env.extend([
        ("KV_API_AUTH_READ", "kv:read".to_owned()),
        ("KV_API_AUTH_WRITE", "kv:write".to_owned()),
        ("KV_API_RESP_LISTEN", "127.0.0.1:0".to_owned()),
    ]);
    env
}

/// Where the reader's Redis-protocol port listens, `host:port`.
pub fn resp_address(reader: &Service) -> String {
    reader
        .logged_address("redis")
        .unwrap_or_else(|| panic!("no Redis-protocol port in the log:\n{}", reader.output()))
}

/// What came back on a connection: the bytes, whether the server closed it, and when.
#[derive(Debug)]
pub struct Heard {
    pub bytes: Vec<u8>,
    pub closed: bool,
    /// From the first byte sent to the last read (the close, or `done`).
    pub elapsed: Duration,
}

impl Heard {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }
}

/// Sends `request` on `stream` and reads until `done` holds for what came back, the server
/// closes the connection, or `wait` passes.
pub async fn ask(
    stream: &mut TcpStream,
    request: &[u8],
    done: impl Fn(&[u8]) -> bool,
    wait: Duration,
) -> Heard {
    let started = Instant::now();
    let mut heard = Heard {
        bytes: Vec::new(),
        closed: stream.write_all(request).await.is_err(),
        elapsed: Duration::ZERO,
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    while !heard.closed && !done(&heard.bytes) {
        match tokio::time::timeout_at(deadline, stream.read(&mut chunk)).await {
            Err(_) => break,
            Ok(Ok(0) | Err(_)) => heard.closed = true,
            Ok(Ok(n)) => heard.bytes.extend_from_slice(&chunk[..n]),
        }
    }
    heard.elapsed = started.elapsed();
    heard
}

/// Reads `stream` until the server closes it or `wait` passes; what it said meanwhile.
pub async fn until_closed(stream: &mut TcpStream, wait: Duration) -> Heard {
    ask(stream, b"", |_| false, wait).await
}

/// `count` connections opened and left idle, as a flood holds them.
pub async fn idle_connections(address: &str, count: usize) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(count);
    for _ in 0..count {
        held.push(TcpStream::connect(address).await.expect("connect"));
    }
    held
}

/// `AUTH token` then `GET key` as one write: the answers once both came back.
pub fn auth_then_get(token: &str, key: &str) -> Vec<u8> {
    format!(
        "*2\r\n$4\r\nAUTH\r\n${}\r\n{token}\r\n*2\r\n$3\r\nGET\r\n${}\r\n{key}\r\n",
        token.len(),
        key.len()
    )
    .into_bytes()
}

/// Whether `bytes` hold `count` whole replies, each a line (`+OK`, `-ERR …`, `:1`) or a bulk
/// string; enough for `AUTH` and `GET`.
pub fn replies(bytes: &[u8], count: usize) -> bool {
    let mut seen = 0;
    let mut rest = bytes;
    while let Some(end) = rest.windows(2).position(|w| w == b"\r\n") {
        let line = &rest[..end];
        rest = &rest[end + 2..];
        if let Some(length) = line.strip_prefix(b"$") {
            let Some(length) = std::str::from_utf8(length)
                .ok()
                .and_then(|l| l.parse::<i64>().ok())
            else {
                return false;
            };
            if length >= 0 {
                let length = length as usize;
                if rest.len() < length + 2 {
                    return false;
                }
                rest = &rest[length + 2..];
            }
        }
        seen += 1;
        if seen >= count {
            return true;
        }
    }
    false
}
