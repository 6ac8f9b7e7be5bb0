//! Foreign topics written with a Confluent schema-registry serializer prefix keys and values with
//! a 5-byte header (magic byte 0, then a 4-byte schema id). When the registry knows a subject for
//! this topic's keys or values, the header is stripped, but only from payloads that carry one
//! with a schema id the registry has for that subject: the original stripped 5 bytes blindly and
//! mangled every other record. A record kv-writer produced (it carries
//! [`kv_core::record::WRITER_HEADER`]) is never stripped, whatever its first byte, and neither is
//! a key on an encrypted topic, which is a keyed MAC.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::{Duration, Instant};

use kv_core::secret::Secret;
use kv_core::settings::client_trusting;

use crate::settings::RegistrySettings;

/// Magic byte plus schema id.
pub const CONFLUENT_HEADER_LEN: usize = 5;
const CONFLUENT_MAGIC: u8 = 0;

/// The schema ids the registry holds for one subject, refreshed while the reader runs.
#[derive(Debug, Clone, Default)]
pub struct SchemaIds(Arc<RwLock<BTreeSet<u32>>>);

impl SchemaIds {
    pub fn of(ids: impl IntoIterator<Item = u32>) -> SchemaIds {
        SchemaIds(Arc::new(RwLock::new(ids.into_iter().collect())))
    }

    fn knows(&self, id: u32) -> bool {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&id)
    }

    fn insert(&self, id: u32) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id);
    }

    /// Adds what the registry lists now; an id is never forgotten, since records framed with
    /// a version soft-deleted since are still on the topic.
    fn extend(&self, ids: BTreeSet<u32>) {
        self.0
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(ids);
    }

    pub fn len(&self) -> usize {
        self.0
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which parts of this topic's records carry the schema-registry header: `Some` when the
/// registry has the part's subject, with the subject's schema ids.
#[derive(Debug, Clone, Default)]
pub struct SchemaFraming {
    pub key: Option<SchemaIds>,
    pub value: Option<SchemaIds>,
    /// Asks the registry about a schema id the sets do not hold yet: set only on the consumer
    /// thread's copy ([`SchemaFraming::looking_up`]), whose blocking client must live there.
    lookup: Option<Arc<IdLookup>>,
}

/// Looks an unknown schema id up at the registry (`GET /schemas/ids/{id}/versions`) before a
/// record with it is stored, so a schema a producer registered a moment ago is stripped like
/// any other; an id the registry does not have for the subject is kept whole. Each id is asked
/// at most once a minute, and all asking together takes at most [`LOOKUP_BUDGET`] of the
/// consumer thread's time a minute: records with unknown ids, or a registry that does not
/// answer, never stall the replica for longer.
#[derive(Debug)]
struct IdLookup {
    url: String,
    topic: String,
    client: OnceLock<Option<reqwest::blocking::Client>>,
    unknown: Mutex<HashMap<u32, Instant>>,
    /// Since when, and how long the asking took in the current window.
    spent: Mutex<(Instant, Duration)>,
}

/// How long an id the registry did not know is not asked about again.
const UNKNOWN_ID_RETRY: Duration = Duration::from_secs(60);
/// How long one question to the registry may take.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(2);
/// The consumer thread's time all questions to the registry may take in [`LOOKUP_WINDOW`];
/// past it an unknown id is not asked about (its record is kept whole) until the window ends.
const LOOKUP_BUDGET: Duration = Duration::from_secs(5);
const LOOKUP_WINDOW: Duration = Duration::from_secs(60);
/// Most unknown ids remembered; past it the oldest answers are forgotten.
const MAX_UNKNOWN_IDS: usize = 10_000;

#[derive(serde::Deserialize)]
struct SubjectVersion {
    subject: String,
}

impl IdLookup {
    /// Whether the registry holds schema `id` under `<topic>-<part>`; a failure counts as no.
    fn holds(&self, part: &str, id: u32) -> bool {
        {
            let unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
            if unknown
                .get(&id)
                .is_some_and(|at| at.elapsed() < UNKNOWN_ID_RETRY)
            {
                return false;
            }
        }
        {
            let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
            if spent.0.elapsed() >= LOOKUP_WINDOW {
                *spent = (Instant::now(), Duration::ZERO);
            }
            if spent.1 >= LOOKUP_BUDGET {
                tracing::debug!(
                    id,
                    "the schema registry's lookups used their time this minute; the record is kept whole"
                );
                return false;
            }
        }
        let subject = format!("{}-{part}", self.topic);
        let started = Instant::now();
        let held = self
            .ask(id)
            .map(|versions| versions.iter().any(|v| v.subject == subject));
        {
            let mut spent = self.spent.lock().unwrap_or_else(PoisonError::into_inner);
            spent.1 += started.elapsed();
            if spent.1 >= LOOKUP_BUDGET {
                tracing::warn!(
                    "schema registry lookups took {} s of the consumer's time this minute; \
                     records with schema ids not known yet are kept whole until it ends",
                    spent.1.as_secs()
                );
            }
        }
        let held = match held {
            Ok(held) => held,
            Err(reason) => {
                tracing::warn!(id, %reason, "cannot ask the schema registry about a schema id; the record is kept whole");
                false
            }
        };
        if !held {
            let mut unknown = self.unknown.lock().unwrap_or_else(PoisonError::into_inner);
            if unknown.len() >= MAX_UNKNOWN_IDS {
                unknown.clear();
            }
            unknown.insert(id, Instant::now());
        }
        held
    }

    fn ask(&self, id: u32) -> Result<Vec<SubjectVersion>, String> {
        let client = self
            .client
            .get_or_init(|| {
                reqwest::blocking::Client::builder()
                    .timeout(LOOKUP_TIMEOUT)
                    .build()
                    .ok()
            })
            .as_ref()
            .ok_or("cannot build an HTTP client")?;
        let response = client
            .get(format!("{}/schemas/ids/{id}/versions", self.url))
            .header(
                "Accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .send()
            .map_err(|e| e.to_string())?;
        match response.status().as_u16() {
            404 => Ok(Vec::new()),
            200 => response.json().map_err(|e| e.to_string()),
            status => Err(format!("it answered {status}")),
        }
    }
}

/// A payload starts with the magic byte but is too short to hold a whole header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadSchemaHeader;

impl BadSchemaHeader {
    pub const REASON: &'static str = "bad_schema_header";
}

impl SchemaFraming {
    /// Under topic encryption record keys are MACs: about one in 256 starts with the magic byte,
    /// and none was written by a registry serializer.
    pub fn without_keys(self) -> SchemaFraming {
        SchemaFraming { key: None, ..self }
    }

    /// This framing, asking `registry_url` about schema ids it does not hold yet. Only for the
    /// consumer thread: the lookup blocks, and its client may not be dropped on a runtime.
    pub fn looking_up(self, registry_url: &str, topic: &str) -> SchemaFraming {
        SchemaFraming {
            lookup: Some(Arc::new(IdLookup {
                url: registry_url.trim_end_matches('/').to_owned(),
                topic: topic.to_owned(),
                client: OnceLock::new(),
                unknown: Mutex::default(),
                spent: Mutex::new((Instant::now(), Duration::ZERO)),
            })),
            ..self
        }
    }

    /// A framing that strips the parts given, with their schema ids, asking nobody.
    pub fn of_parts(key: Option<SchemaIds>, value: Option<SchemaIds>) -> SchemaFraming {
        SchemaFraming {
            key,
            value,
            lookup: None,
        }
    }

    pub fn is_on(&self) -> bool {
        self.key.is_some() || self.value.is_some()
    }

    fn unframe<'a>(
        &self,
        bytes: &'a [u8],
        ids: &SchemaIds,
        part: &str,
    ) -> Result<&'a [u8], BadSchemaHeader> {
        match bytes {
            [CONFLUENT_MAGIC, a, b, c, d, rest @ ..] => {
                let id = u32::from_be_bytes([*a, *b, *c, *d]);
                let known = ids.knows(id)
                    || self.lookup.as_ref().is_some_and(|lookup| {
                        let held = lookup.holds(part, id);
                        if held {
                            ids.insert(id);
                        }
                        held
                    });
                // A zero byte and four more are as likely plain data as a header with an id
                // the registry never issued: served as is.
                Ok(if known { rest } else { bytes })
            }
            [CONFLUENT_MAGIC, ..] => Err(BadSchemaHeader),
            // Not written by a registry serializer: served as is.
            _ => Ok(bytes),
        }
    }

    pub fn strip_key<'a>(
        &self,
        key: Option<&'a [u8]>,
    ) -> Result<Option<&'a [u8]>, BadSchemaHeader> {
        match (key, &self.key) {
            (Some(key), Some(ids)) => self.unframe(key, ids, "key").map(Some),
            (other, _) => Ok(other),
        }
    }

    pub fn strip_value<'a>(
        &self,
        value: Option<&'a [u8]>,
    ) -> Result<Option<&'a [u8]>, BadSchemaHeader> {
        match (value, &self.value) {
            (Some(value), Some(ids)) => self.unframe(value, ids, "value").map(Some),
            (other, _) => Ok(other),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot list the subjects of the schema registry at {url} (KAFKA_SCHEMA_REGISTRY_URL): {reason}")]
pub struct RegistryError {
    url: String,
    reason: String,
}

/// Most versions read per subject, so a registry cannot make start-up fetch without end.
const MAX_VERSIONS: usize = 1_000;

/// A client of the schema registry at one URL, for this topic's subjects.
#[derive(Debug, Clone)]
pub struct Registry {
    client: reqwest::Client,
    url: String,
    topic: String,
    user_info: Option<Secret<String>>,
}

impl Registry {
    pub fn new(
        access: &RegistrySettings,
        topic: &str,
        timeout: Duration,
    ) -> Result<Registry, RegistryError> {
        let url = access.url.as_str();
        let client = client_trusting(access.ca.as_ref())
            .timeout(timeout)
            .build()
            .map_err(|e| RegistryError {
                url: redact_userinfo(url),
                reason: e.to_string(),
            })?;
        Ok(Registry {
            client,
            url: url.trim_end_matches('/').to_owned(),
            topic: topic.to_owned(),
            user_info: access.user_info.clone(),
        })
    }

    fn fail(&self, reason: String) -> RegistryError {
        RegistryError {
            url: redact_userinfo(&self.url),
            reason,
        }
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, RegistryError> {
        let mut request = self.client.get(format!("{}{path}", self.url));
        if let Some((user, password)) = self
            .user_info
            .as_ref()
            .and_then(|u| u.expose().split_once(':'))
        {
            request = request.basic_auth(user, Some(password));
        }
        let response = request
            .header(
                "Accept",
                "application/vnd.schemaregistry.v1+json, application/json",
            )
            .send()
            .await
            .map_err(|e| self.fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(self.fail(format!("{path} answered {}", response.status())));
        }
        response
            .json()
            .await
            .map_err(|e| self.fail(format!("{path}: unexpected answer: {e}")))
    }

    /// Asks the registry (`GET {url}/subjects`) whether `<topic>-key` / `<topic>-value` exist,
    /// and which schema ids each holds.
    ///
    /// Start-up fails when the registry cannot answer: guessing would store either framed or
    /// mangled values, and neither is fixed without a rebuild.
    pub async fn discover(&self) -> Result<SchemaFraming, RegistryError> {
        let subjects: Vec<String> = self.get("/subjects").await?;
        let mut framing = SchemaFraming::default();
        for (part, slot) in [("key", &mut framing.key), ("value", &mut framing.value)] {
            let subject = format!("{}-{part}", self.topic);
            if subjects.contains(&subject) {
                *slot = Some(SchemaIds::of(self.schema_ids(&subject).await?));
            }
        }
        Ok(framing)
    }

    /// Re-reads the schema ids of the subjects `framing` strips, so a schema registered after
    /// start-up is stripped too; a failure keeps the ids known so far.
    pub async fn refresh(&self, framing: &SchemaFraming) {
        for (part, ids) in [("key", &framing.key), ("value", &framing.value)] {
            let Some(ids) = ids else { continue };
            let subject = format!("{}-{part}", self.topic);
            match self.schema_ids(&subject).await {
                Ok(fresh) => ids.extend(fresh),
                Err(error) => tracing::warn!(%error, "cannot refresh the schema ids of {subject}"),
            }
        }
    }

    async fn schema_ids(&self, subject: &str) -> Result<BTreeSet<u32>, RegistryError> {
        let subject_path =
            percent_encoding::utf8_percent_encode(subject, percent_encoding::NON_ALPHANUMERIC)
                .to_string();
        let versions: Vec<u32> = self
            .get(&format!("/subjects/{subject_path}/versions"))
            .await?;
        let mut ids = BTreeSet::new();
        for version in versions.into_iter().take(MAX_VERSIONS) {
            let schema: Version = self
                .get(&format!("/subjects/{subject_path}/versions/{version}"))
                .await?;
            ids.insert(schema.id);
        }
        Ok(ids)
    }
}

#[derive(serde::Deserialize)]
struct Version {
    id: u32,
}

/// The URL without the `user:password@` it may carry, for error messages and logs.
fn redact_userinfo(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            match rest[..authority_end].rfind('@') {
                Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
                None => url.to_owned(),
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookups_of_unknown_ids_at_a_registry_that_never_answers_stall_the_consumer_a_bounded_time() {
        // A registry that takes connections and answers none.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept() {
                held.push(stream);
            }
        });
        let framing = SchemaFraming::default().looking_up(&url, "t");
        let lookup = framing.lookup.as_ref().expect("a lookup");
        let started = Instant::now();
        // A poll's worth of records, each framed with an id never seen.
        for id in 0..20 {
            assert!(!lookup.holds("value", id));
        }
        let took = started.elapsed();
        assert!(
            took < LOOKUP_BUDGET + LOOKUP_TIMEOUT * 2,
            "20 unknown ids held the consumer {took:?}"
        );
    }

    #[tokio::test]
    async fn the_registry_is_asked_with_the_basic_auth_user_info() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut chunk).expect("read") {
                    0 => break,
                    n => request.extend_from_slice(&chunk[..n]),
                }
            }
            let body = "[]";
            write!(
                stream,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            )
            .expect("answer");
            String::from_utf8_lossy(&request).to_ascii_lowercase()
        });
        let access = RegistrySettings {
            url,
            user_info: Some(Secret::new("user:pass".to_owned())),
            ca: None,
        };
        let registry = Registry::new(&access, "kv", Duration::from_secs(5)).expect("client");
        let framing = registry.discover().await.expect("discover");
        assert!(!framing.is_on());
        let request = server.join().expect("server");
        // base64("user:pass")
        assert!(
            request.contains("authorization: basic dxnlcjpwyxnz"),
            "{request}"
        );
    }

    #[test]
    fn registry_credentials_never_reach_an_error_message() {
        assert_eq!(
            redact_userinfo("https://user:secret@registry:8081/x"),
            "https://***@registry:8081/x"
        );
        assert_eq!(
            redact_userinfo("http://registry:8081"),
            "http://registry:8081"
        );
    }

    fn both(ids: &[u32]) -> SchemaFraming {
        SchemaFraming {
            key: Some(SchemaIds::of(ids.iter().copied())),
            value: Some(SchemaIds::of(ids.iter().copied())),
            ..SchemaFraming::default()
        }
    }

    #[test]
    fn a_framed_payload_loses_exactly_its_header() {
        assert_eq!(
            both(&[7]).strip_value(Some(b"\x00\x00\x00\x00\x07{\"a\":1}")),
            Ok(Some(b"{\"a\":1}".as_slice()))
        );
        assert_eq!(
            both(&[7]).strip_key(Some(b"\x00\x00\x00\x00\x07")),
            Ok(Some(b"".as_slice()))
        );
    }

    #[test]
    fn payloads_without_the_magic_byte_are_kept_whole() {
        assert_eq!(
            both(&[7]).strip_value(Some(b"plain")),
            Ok(Some(b"plain".as_slice()))
        );
        assert_eq!(
            both(&[7]).strip_value(None),
            Ok(None),
            "a tombstone stays one"
        );
    }

    #[test]
    fn a_truncated_header_is_a_bad_record() {
        assert_eq!(
            both(&[7]).strip_value(Some(b"\x00\x00\x01")),
            Err(BadSchemaHeader)
        );
    }

    #[test]
    fn a_header_naming_a_schema_id_the_registry_does_not_have_is_kept() {
        assert_eq!(
            both(&[8]).strip_value(Some(b"\x00\x00\x00\x00\x07v")),
            Ok(Some(b"\x00\x00\x00\x00\x07v".as_slice()))
        );
    }

    #[test]
    fn without_keys_never_strips_a_key() {
        let framing = both(&[7]).without_keys();
        assert_eq!(
            framing.strip_key(Some(b"\x00\x00\x00\x00\x07k")),
            Ok(Some(b"\x00\x00\x00\x00\x07k".as_slice()))
        );
        assert_eq!(
            framing.strip_value(Some(b"\x00\x00\x00\x00\x07v")),
            Ok(Some(b"v".as_slice()))
        );
    }

    #[test]
    fn nothing_is_stripped_without_a_subject() {
        let none = SchemaFraming::default();
        assert_eq!(
            none.strip_value(Some(b"\x00\x00\x00\x00\x07v")),
            Ok(Some(b"\x00\x00\x00\x00\x07v".as_slice()))
        );
    }
}
