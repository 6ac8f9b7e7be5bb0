//! A watch that resumes: the reader's server-sent events under a prefix, reconnected from the
//! last position delivered whenever the stream ends (a reader restarting, a buffer overflow, a
//! token that expired and was replaced with [`crate::Client::set_bearer`]).

use std::pin::Pin;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use eventsource_stream::{Event, Eventsource};
use futures::{Stream, StreamExt};
use reqwest::StatusCode;

use std::sync::Arc;

use crate::error::Error;
use crate::paths::join;
use crate::transport::Transport;
use crate::types::Version;

/// Longest wait between two reconnections when the readers do not say how long.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

type Events = Pin<Box<dyn Stream<Item = Result<Event, String>> + Send>>;

/// One change, or a marker of where the watch stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    Put {
        key: Bytes,
        value: Bytes,
        version: Version,
        /// When the key expires, in milliseconds since the Unix epoch.
        expires_at_ms: Option<u64>,
    },
    Delete {
        key: Bytes,
        version: Version,
        /// Why, when the reader says (`expired`); `None` for a delete someone wrote.
        reason: Option<String>,
    },
    /// Everything up to `id` was delivered; a read with `id` as its token sees at least that.
    Progress { id: String },
    /// Drop what you hold under the prefix: the current entries follow as `Put`s.
    Reset,
}

/// The changes under a prefix, from its current entries on; [`Watch::next`] gives them one by
/// one and reconnects by itself. Made by [`crate::Client::watch`].
pub struct Watch {
    transport: Arc<Transport>,
    prefix: String,
    /// The last position delivered: where a reconnection resumes.
    last_id: Option<String>,
    events: Option<Events>,
    failures: u32,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("prefix", &self.prefix)
            .field("last_id", &self.last_id)
            .field("connected", &self.events.is_some())
            .finish()
    }
}

#[derive(serde::Deserialize)]
struct Change {
    key: Option<String>,
    key_b64: Option<String>,
    value: Option<String>,
    value_b64: Option<String>,
    partition: i32,
    offset: i64,
    expires_at: Option<u64>,
    reason: Option<String>,
}

impl Watch {
    pub(crate) fn new(transport: Arc<Transport>, prefix: String) -> Self {
        Self {
            transport,
            prefix,
            last_id: None,
            events: None,
            failures: 0,
        }
    }

    /// The position a new watch would resume from ([`Watch::resume_from`]).
    pub fn last_id(&self) -> Option<&str> {
        self.last_id.as_deref()
    }

    /// Resumes after `id` (a `Progress` id or an event's) instead of starting from the entries.
    pub fn resume_from(mut self, id: impl Into<String>) -> Self {
        self.last_id = Some(id.into());
        self
    }

    /// The next event. Reconnects when the stream ends, after the readers' `Retry-After` or a
    /// growing pause; an error is what the readers refused (`401`/`403`: replace the token with
    /// [`crate::Client::set_bearer`] and call again) or [`crate::ClientBuilder::max_retries`]
    /// reconnections in a row that failed.
    pub async fn next(&mut self) -> Result<WatchEvent, Error> {
        loop {
            let Some(events) = self.events.as_mut() else {
                self.events = Some(self.connect().await?);
                continue;
            };
            let event = match events.next().await {
                Some(Ok(event)) => event,
                // Ended or broken: resume from the last position.
                Some(Err(_)) | None => {
                    self.events = None;
                    self.pause().await?;
                    continue;
                }
            };
            self.failures = 0;
            let id = (!event.id.is_empty()).then(|| event.id.clone());
            let delivered = match event.event.as_str() {
                "put" | "delete" => Some(parse_change(&event)?),
                "progress" => id.clone().map(|id| WatchEvent::Progress { id }),
                "reset" => Some(WatchEvent::Reset),
                // `overflow`, a token that expired, a reader shutting down: the stream ends
                // here, and the next connection resumes.
                _ => {
                    self.events = None;
                    None
                }
            };
            if let Some(id) = id {
                self.last_id = Some(id);
            }
            if let Some(delivered) = delivered {
                return Ok(delivered);
            }
        }
    }

    async fn connect(&mut self) -> Result<Events, Error> {
        let prefix = self.prefix.clone();
        let last_id = self.last_id.clone();
        let response = self
            .transport
            .read_request(None, move |http, base| {
                let mut url = join(base, "v1/kv:watch");
                url.query_pairs_mut().append_pair("prefix", &prefix);
                let mut request = http.get(url).header("accept", "text/event-stream");
                request = match &last_id {
                    Some(id) => request.header("last-event-id", id.as_str()),
                    None => request.query(&[("snapshot", "true")]),
                };
                // A stream has no overall deadline; its silence is bounded by `progress`.
                request.timeout(Duration::from_secs(u64::from(u32::MAX)))
            })
            .await;
        let response = match response {
            Ok(response) if response.status() == StatusCode::OK => response,
            Ok(response) => return Err(Error::from_response(response).await),
            Err(error) => return Err(error),
        };
        Ok(Box::pin(
            response
                .bytes_stream()
                .eventsource()
                .map(|event| event.map_err(|e| e.to_string())),
        ))
    }

    async fn pause(&mut self) -> Result<(), Error> {
        self.failures += 1;
        if self.failures > self.transport.max_retries.max(1) {
            return Err(Error::Protocol(format!(
                "the watch broke {} times in a row",
                self.failures - 1
            )));
        }
        let wait = Duration::from_millis(100 << self.failures.min(6)).min(MAX_BACKOFF);
        tokio::time::sleep(wait).await;
        Ok(())
    }
}

fn parse_change(event: &Event) -> Result<WatchEvent, Error> {
    let change: Change = serde_json::from_str(&event.data)
        .map_err(|e| Error::Protocol(format!("a watch event: {e}")))?;
    let bytes = |text: Option<String>, b64: Option<String>| -> Result<Bytes, Error> {
        match (text, b64) {
            (Some(text), _) => Ok(Bytes::from(text)),
            (None, Some(b64)) => STANDARD
                .decode(b64)
                .map(Bytes::from)
                .map_err(|e| Error::Protocol(format!("a watch event's base64: {e}"))),
            (None, None) => Ok(Bytes::new()),
        }
    };
    let version = Version {
        partition: change.partition,
        offset: change.offset,
    };
    let key = bytes(change.key, change.key_b64)?;
    Ok(if event.event == "put" {
        WatchEvent::Put {
            key,
            value: bytes(change.value, change.value_b64)?,
            version,
            expires_at_ms: change.expires_at,
        }
    } else {
        WatchEvent::Delete {
            key,
            version,
            reason: change.reason,
        }
    })
}
