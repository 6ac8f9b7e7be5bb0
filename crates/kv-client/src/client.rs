//! The client: writes through kv-writer, reads from kv-reader replicas, both with the
//! consistency token of every write made and `Retry-After` honoured.

use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use kv_wire::consistency::{ConsistencyToken, RecordPosition};
use reqwest::header::{ETAG, IF_MATCH, IF_NONE_MATCH};
use reqwest::{Method, StatusCode, Url};

use crate::error::Error;
use crate::paths::{header_str, join, key_path, EXPIRES_AT, IDEMPOTENCY_KEY, TTL_SECONDS};
use crate::routing::Routing;
use crate::transport::Transport;
use crate::types::{Change, Entry, Precondition, Version, WriteOptions, Written};
use crate::watch::Watch;

/// Builds a [`Client`].
#[derive(Debug, Clone)]
pub struct ClientBuilder {
    writer: Option<String>,
    readers: Vec<String>,
    bearer: Option<String>,
    timeout: Duration,
    max_retries: u32,
    max_retry_wait: Duration,
    route_by_partition: bool,
    max_update_attempts: u32,
    read_your_writes: bool,
}

impl Default for ClientBuilder {
    fn default() -> Self {
        Self {
            writer: None,
            readers: Vec::new(),
            bearer: None,
            timeout: Duration::from_secs(30),
            max_retries: 5,
            max_retry_wait: Duration::from_secs(10),
            route_by_partition: true,
            max_update_attempts: 64,
            read_your_writes: true,
        }
    }
}

impl ClientBuilder {
    /// kv-writer's base URL (`http://kv-writer:8080`); required for writes.
    pub fn writer(mut self, url: impl Into<String>) -> Self {
        self.writer = Some(url.into());
        self
    }

    /// kv-reader base URLs. Sharded readers in shard order (as `KV_API_SHARD_PEERS` lists them)
    /// let reads go straight to a key's shard; full replicas are used in turn.
    pub fn readers<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.readers = urls.into_iter().map(Into::into).collect();
        self
    }

    /// The access token sent as `Authorization: Bearer`; [`Client::set_bearer`] replaces it.
    pub fn bearer(mut self, token: impl Into<String>) -> Self {
        self.bearer = Some(token.into());
        self
    }

    /// The longest one request may take (30 s). A read waiting for its consistency token waits
    /// within it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How many times a `503`/`429` with `Retry-After`, or an unreachable service, is retried (5).
    pub fn max_retries(mut self, retries: u32) -> Self {
        self.max_retries = retries;
        self
    }

    /// The longest single wait a `Retry-After` may impose (10 s); a longer one is cut to it.
    pub fn max_retry_wait(mut self, wait: Duration) -> Self {
        self.max_retry_wait = wait;
        self
    }

    /// Whether reads go straight to a key's shard (on). Turn it off for a topic encrypted on
    /// Kafka (`KV_API_ENCRYPT_DATA_ON_KAFKA`): its partitions follow a keyed MAC the client does
    /// not know, so the computed shard would forward anyway.
    pub fn route_by_partition(mut self, on: bool) -> Self {
        self.route_by_partition = on;
        self
    }

    /// How many read-modify-write rounds [`Client::update`] tries before giving up (64).
    pub fn max_update_attempts(mut self, attempts: u32) -> Self {
        self.max_update_attempts = attempts.max(1);
        self
    }

    /// Whether reads carry the consistency token of this client's writes (on). Off, a read
    /// answers what the replica holds when it arrives, without waiting for those writes: what
    /// measuring replication lag needs, or a cache that takes any recent value. The writes'
    /// positions are still gathered ([`Client::token`]), and [`Client::update`] stays correct:
    /// a stale read only costs it another round.
    pub fn read_your_writes(mut self, on: bool) -> Self {
        self.read_your_writes = on;
        self
    }

    pub fn build(self) -> Result<Client, Error> {
        let parse = |what: &str, url: &str| {
            let mut parsed =
                Url::parse(url).map_err(|e| Error::Config(format!("{what} URL {url:?}: {e}")))?;
            if !matches!(parsed.scheme(), "http" | "https") {
                return Err(Error::Config(format!("{what} URL {url:?} is not http(s)")));
            }
            // Paths are joined to the base: keep it a directory.
            if !parsed.path().ends_with('/') {
                let path = format!("{}/", parsed.path());
                parsed.set_path(&path);
            }
            Ok(parsed)
        };
        let writer = self
            .writer
            .as_deref()
            .map(|url| parse("writer", url))
            .transpose()?;
        let readers = self
            .readers
            .iter()
            .map(|url| parse("reader", url))
            .collect::<Result<Vec<_>, _>>()?;
        let http = reqwest::Client::builder()
            .timeout(self.timeout)
            // A redirect would carry the token elsewhere; the services never answer one.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| Error::Config(format!("HTTP client: {e}")))?;
        Ok(Client {
            inner: Arc::new(Inner {
                transport: Arc::new(Transport {
                    http,
                    routing: Routing::new(readers, self.route_by_partition),
                    bearer: RwLock::new(self.bearer),
                    max_retries: self.max_retries,
                    max_retry_wait: self.max_retry_wait,
                }),
                writer,
                seen: Mutex::default(),
                max_update_attempts: self.max_update_attempts,
                read_your_writes: self.read_your_writes,
            }),
        })
    }
}

/// A kafka-kv client; cheap to clone (the clones share connections and the consistency token).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    transport: Arc<Transport>,
    writer: Option<Url>,
    /// The highest offset per partition this client wrote: what its reads wait for.
    seen: Mutex<ConsistencyToken>,
    max_update_attempts: u32,
    /// Whether reads send `seen` ([`ClientBuilder::read_your_writes`]).
    read_your_writes: bool,
}

impl Client {
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// Replaces the access token (a refreshed one) for every later request and watch reconnect.
    pub fn set_bearer(&self, token: impl Into<String>) {
        self.inner.transport.set_bearer(token.into());
    }

    /// The consistency token of every write this client made so far: what its reads wait for.
    pub fn token(&self) -> Option<ConsistencyToken> {
        let seen = self
            .inner
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        (!seen.is_empty()).then(|| seen.clone())
    }

    /// Watches the changes under `prefix` (every key for `""`), from the current entries on
    /// (`snapshot=true`); see [`Watch`].
    pub fn watch(&self, prefix: &str) -> Watch {
        Watch::new(Arc::clone(&self.inner.transport), prefix.to_owned())
    }

    /// Stores `value` under `key`.
    pub async fn put(&self, key: &str, value: impl Into<Bytes>) -> Result<Written, Error> {
        self.put_with(key, value, &WriteOptions::default()).await
    }

    /// Stores `value` under `key` with a TTL, a precondition or an idempotency key. A failed
    /// precondition is [`Error::PreconditionFailed`] with the key's current version.
    pub async fn put_with(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        options: &WriteOptions,
    ) -> Result<Written, Error> {
        self.write(Method::PUT, key, Some(value.into()), options)
            .await
    }

    /// Deletes `key` (a tombstone; deleting an absent key succeeds).
    pub async fn delete(&self, key: &str) -> Result<Written, Error> {
        self.delete_with(key, &WriteOptions::default()).await
    }

    /// Deletes `key` on a precondition.
    pub async fn delete_with(&self, key: &str, options: &WriteOptions) -> Result<Written, Error> {
        self.write(Method::DELETE, key, None, options).await
    }

    /// Reads `key`: `None` when it is absent. The read waits until the replica applied every
    /// write this client made (unless [`ClientBuilder::read_your_writes`] is off).
    pub async fn get(&self, key: &str) -> Result<Option<Entry>, Error> {
        let path = key_path(key)?;
        let token = self
            .token()
            .filter(|_| self.inner.read_your_writes)
            .map(|t| t.to_string());
        let response = self
            .inner
            .transport
            .read_request(Some(key.as_bytes()), |http, base| {
                let mut request = http.get(join(base, &path));
                if let Some(token) = &token {
                    request = request.header(kv_wire::headers::CONSISTENCY_TOKEN, token);
                }
                request
            })
            .await?;
        match response.status() {
            StatusCode::NOT_FOUND => Ok(None),
            status if status.is_success() => {
                let headers = response.headers();
                let version = header_str(headers, ETAG.as_str()).and_then(Version::from_etag);
                let expires_at_ms = header_str(headers, EXPIRES_AT).and_then(|v| v.parse().ok());
                let value = response.bytes().await.map_err(Error::transport)?;
                Ok(Some(Entry {
                    value,
                    version,
                    expires_at_ms,
                }))
            }
            _ => Err(Error::from_response(response).await),
        }
    }

    /// Read-modify-write: reads `key`, asks `change` what to write given its entry, and writes it
    /// on the condition that the key did not change in between; on a `412` it reads again and
    /// asks again, up to [`ClientBuilder::max_update_attempts`] times. `change` may run more
    /// than once.
    pub async fn update<F>(&self, key: &str, mut change: F) -> Result<Written, Error>
    where
        F: FnMut(Option<&Entry>) -> Change,
    {
        for _ in 0..self.inner.max_update_attempts {
            let current = self.get(key).await?;
            let precondition = match &current {
                Some(Entry {
                    version: Some(version),
                    ..
                }) => Precondition::IfMatch(*version),
                Some(_) => Precondition::IfExists,
                None => Precondition::IfAbsent,
            };
            let options = WriteOptions {
                precondition,
                ..WriteOptions::default()
            };
            let written = match change(current.as_ref()) {
                Change::Keep => {
                    return Ok(Written {
                        version: current.and_then(|entry| entry.version),
                        token: self.token(),
                    })
                }
                Change::Put(value) => self.put_with(key, value, &options).await,
                Change::Delete => self.delete_with(key, &options).await,
            };
            match written {
                Err(Error::PreconditionFailed { .. }) => continue,
                other => return other,
            }
        }
        Err(Error::Contended {
            attempts: self.inner.max_update_attempts,
        })
    }

    /// Adds `by` to the decimal integer stored under `key` (absent counts as 0) with
    /// [`Client::update`], and answers the new value. A value that is not a decimal integer is
    /// [`Error::NotACounter`].
    pub async fn increment(&self, key: &str, by: i64) -> Result<i64, Error> {
        let mut result = Ok(0);
        self.update(key, |entry| {
            let current = match entry {
                None => Ok(0),
                Some(entry) => std::str::from_utf8(&entry.value)
                    .ok()
                    .and_then(|text| text.trim().parse::<i64>().ok())
                    .ok_or(()),
            };
            match current.map(|n| n.checked_add(by)) {
                Ok(Some(next)) => {
                    result = Ok(next);
                    Change::Put(Bytes::from(next.to_string()))
                }
                _ => {
                    result = Err(Error::NotACounter {
                        key: key.to_owned(),
                    });
                    Change::Keep
                }
            }
        })
        .await?;
        result
    }

    async fn write(
        &self,
        method: Method,
        key: &str,
        value: Option<Bytes>,
        options: &WriteOptions,
    ) -> Result<Written, Error> {
        let writer = self
            .inner
            .writer
            .clone()
            .ok_or_else(|| Error::Config("no writer URL was given for a write".to_owned()))?;
        let url = join(&writer, &key_path(key)?);
        let conditional = options.precondition != Precondition::Always;
        // A conditional write always carries a key, so that a retry of one whose answer was lost
        // is answered as the first one was instead of failing on its own success.
        let idempotency_key = options
            .idempotency_key
            .clone()
            .or_else(|| conditional.then(|| uuid::Uuid::new_v4().to_string()));
        let transport = &self.inner.transport;
        let response = transport
            .send(|| {
                let mut request = transport.http.request(method.clone(), url.clone());
                if let Some(value) = &value {
                    request = request.body(value.clone());
                }
                if let Some(ttl) = options.ttl {
                    request = request.header(TTL_SECONDS, ttl.as_secs().max(1).to_string());
                }
                match options.precondition {
                    Precondition::Always => {}
                    Precondition::IfMatch(version) => {
                        request = request.header(IF_MATCH, version.etag());
                    }
                    Precondition::IfExists => request = request.header(IF_MATCH, "*"),
                    Precondition::IfAbsent => request = request.header(IF_NONE_MATCH, "*"),
                }
                if let Some(key) = &idempotency_key {
                    request = request.header(IDEMPOTENCY_KEY, key.as_str());
                }
                request
            })
            .await?;
        let status = response.status();
        if status == StatusCode::PRECONDITION_FAILED {
            let current =
                header_str(response.headers(), ETAG.as_str()).and_then(Version::from_etag);
            return Err(Error::PreconditionFailed { current });
        }
        if !status.is_success() {
            return Err(Error::from_response(response).await);
        }
        #[derive(serde::Deserialize)]
        struct Acknowledged {
            partition: i32,
            offset: Option<i64>,
        }
        let ack: Acknowledged = response
            .json()
            .await
            .map_err(|e| Error::Protocol(format!("the writer's answer: {e}")))?;
        let position = ack.offset.map(|offset| RecordPosition {
            partition: ack.partition,
            offset,
        });
        let token = position.map(|position| {
            self.inner
                .seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .include(position);
            ConsistencyToken::from_positions([position])
        });
        Ok(Written {
            version: position
                .filter(|_| method != Method::DELETE)
                .map(|p| Version {
                    partition: p.partition,
                    offset: p.offset,
                }),
            token,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::TcpListener;
    use std::sync::mpsc;

    use super::*;

    /// A stand-in for the writer and the reader on one port: every request is answered `200`
    /// with `body` over a connection of its own, and its head is handed to the receiver.
    fn stand_in(body: &'static str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let (heads, received) = mpsc::channel();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = BufReader::new(stream);
                let mut head = String::new();
                while reader.read_line(&mut head).is_ok_and(|n| n > 2) {}
                let length = head
                    .lines()
                    .find_map(|line| {
                        let (name, value) = line.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                let mut discarded = vec![0; length];
                let _ = reader.read_exact(&mut discarded);
                let _ = heads.send(head);
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = reader.get_mut().write_all(answer.as_bytes());
            }
        });
        (url, received)
    }

    #[tokio::test]
    async fn reads_carry_the_writes_token_unless_read_your_writes_is_off() {
        for on in [true, false] {
            let (url, heads) = stand_in(r#"{"partition":1,"offset":7}"#);
            let client = Client::builder()
                .writer(&url)
                .readers([&url])
                .read_your_writes(on)
                .build()
                .expect("client");
            client.put("k", "v").await.expect("put");
            client.get("k").await.expect("get").expect("an entry");
            let heads: Vec<String> = heads.try_iter().collect();
            let get = heads
                .iter()
                .find(|head| head.starts_with("GET "))
                .expect("a GET");
            let token = format!("{}: 1:7", kv_wire::headers::CONSISTENCY_TOKEN);
            assert_eq!(get.to_ascii_lowercase().contains(&token), on, "{get}");
            // Gathered either way.
            assert_eq!(
                client.token().map(|t| t.to_string()).as_deref(),
                Some("1:7")
            );
        }
    }
}
