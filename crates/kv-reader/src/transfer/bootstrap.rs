//! A new reader's first start: a snapshot from a peer (`KV_API_BOOTSTRAP_PEERS`) instead of a
//! replay of the whole topic. Runs on the consumer thread before it assigns its partitions, so
//! the HTTP server answers meanwhile (not ready). Any failure empties the store and the reader
//! replays the topic, as without peers: the log stays the source of truth.

use std::time::Duration;

use kv_core::record::RecordCodec;
use kv_core::secret::Secret;

use crate::cluster::forward::peer_client;
use crate::cluster::shard::ShardSpec;
use crate::store::Store;
use crate::transfer::cluster::ASK_TIMEOUT;
use crate::transfer::format::{self, Expected, ImportProgress, Imported};
use kv_core::settings::KafkaProperties;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// A peer that sends nothing for this long is given up on.
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const TOKEN_TIMEOUT: Duration = Duration::from_secs(10);

/// Where snapshots come from and how to ask for one.
#[derive(Debug, Clone)]
pub struct BootstrapConfig {
    pub peers: Vec<String>,
    /// This reader's brokers: a snapshot of another Kafka cluster is refused.
    pub kafka: KafkaProperties,
    pub topic: String,
    pub shard: Option<ShardSpec>,
    /// The client-credentials grant for an admin token, when the peers check tokens.
    pub client: Option<(String, Secret<String>)>,
    /// The admin token may go to an `http://` peer (KV_API_BOOTSTRAP_ALLOW_HTTP_TOKEN).
    pub allow_http_token: bool,
    /// The provider's token endpoint, or the issuer to discover it from.
    pub token_endpoint: Option<String>,
    pub issuer: Option<String>,
    pub scopes: Vec<String>,
}

/// Takes a snapshot into `store` when it holds no replica yet; `None` when there was nothing
/// to do or no peer gave one (the reasons are logged). `delete_retention` is the topic's, when
/// compacted: a peer cut off from the broker for longer is refused.
pub fn run(
    config: &BootstrapConfig,
    store: &Store,
    codec: &RecordCodec,
    source_format: &str,
    progress: &ImportProgress,
    delete_retention: Option<Duration>,
) -> Option<Imported> {
    if config.peers.is_empty() {
        return None;
    }
    match store.topic() {
        Ok(Some(_)) => return None,
        Ok(None) => {}
        Err(error) => {
            tracing::warn!(%error, "cannot read the store; not taking a snapshot");
            return None;
        }
    }
    // The consumer thread has no runtime of its own; the transfer gets one.
    let built = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            peer_client(CONNECT_TIMEOUT)
                .build()
                .map(|client| (runtime, client))
                .map_err(|e| e.to_string())
        });
    let (runtime, client) = match built {
        Ok(built) => built,
        Err(error) => {
            tracing::warn!(%error, "cannot build an HTTP client; replaying the topic instead");
            return None;
        }
    };
    let token = match &config.client {
        None => None,
        Some((id, secret)) => match runtime.block_on(admin_token(&client, config, id, secret)) {
            Ok(token) => Some(token),
            Err(reason) => {
                tracing::warn!(
                    "no admin token for a snapshot ({reason}); replaying the topic from scratch"
                );
                return None;
            }
        },
    };
    let query = match &config.shard {
        None => String::new(),
        Some(shard) => format!(
            "?shard={}%2F{}&replicas={}",
            shard.index, shard.count, shard.replicas
        ),
    };
    // The id this reader's brokers give; unknown (no broker answered), nothing is compared.
    let cluster_id = kv_core::kafka::cluster_id(&config.kafka, ASK_TIMEOUT);
    let expected = Expected {
        topic: &config.topic,
        source_format,
        shard: config.shard,
        delete_retention,
        cluster_id: cluster_id.as_deref(),
    };
    let mut reasons = Vec::new();
    let failed = |reasons: &mut Vec<String>, reason: String| {
        tracing::warn!("no snapshot from {reason}");
        reasons.push(reason);
    };
    for peer in &config.peers {
        // The admin token reads every replica: it goes in clear only where the operator says
        // the network is trusted.
        if token.is_some() && !config.allow_http_token && !peer.starts_with("https://") {
            failed(
                &mut reasons,
                format!(
                    "{peer}: the admin token is sent only over https:// \
                     (KV_API_BOOTSTRAP_ALLOW_HTTP_TOKEN=true sends it over http://)"
                ),
            );
            continue;
        }
        let started = std::time::Instant::now();
        let mut request = client
            .get(format!("{peer}/admin/v1/snapshot{query}"))
            .header(format::FORMAT_REQUEST_HEADER, format::TRACED_FORMAT);
        if let Some(token) = &token {
            request = request.bearer_auth(token.expose());
        }
        let response = match runtime.block_on(request.send()) {
            Ok(response) => response,
            Err(error) => {
                failed(&mut reasons, format!("{peer}: {error}"));
                continue;
            }
        };
        if !response.status().is_success() {
            let status = response.status();
            let body: String = runtime
                .block_on(response.text())
                .unwrap_or_default()
                .chars()
                .take(300)
                .collect();
            failed(&mut reasons, format!("{peer}: answered {status}: {body}"));
            continue;
        }
        tracing::info!(peer = %peer, "taking a snapshot from a peer");
        let mut body = ChunkReader {
            runtime: &runtime,
            response,
            chunk: bytes::Bytes::new(),
        };
        match format::import(&mut body, store, codec, &expected, progress) {
            Ok(imported) => {
                tracing::info!(
                    peer = %peer,
                    entries = imported.entries,
                    bytes = imported.bytes,
                    seconds = started.elapsed().as_secs_f64(),
                    next_offsets = ?imported.header.next_offsets,
                    "snapshot taken; consuming the topic from its offsets"
                );
                return Some(imported);
            }
            Err(error) => failed(&mut reasons, format!("{peer}: {error}")),
        }
    }
    tracing::warn!(
        "no peer gave a snapshot, replaying the topic from scratch: {}",
        reasons.join("; ")
    );
    None
}

/// A response body read as `std::io::Read`, each chunk awaited for at most [`READ_TIMEOUT`].
struct ChunkReader<'a> {
    runtime: &'a tokio::runtime::Runtime,
    response: reqwest::Response,
    chunk: bytes::Bytes,
}

impl std::io::Read for ChunkReader<'_> {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            // The timer is made inside the runtime, which it needs.
            let response = &mut self.response;
            let next = self
                .runtime
                .block_on(async { tokio::time::timeout(READ_TIMEOUT, response.chunk()).await });
            match next {
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("the peer sent nothing for {} s", READ_TIMEOUT.as_secs()),
                    ))
                }
                Ok(Err(error)) => return Err(std::io::Error::other(error)),
                Ok(Ok(None)) => return Ok(0),
                Ok(Ok(Some(chunk))) => self.chunk = chunk,
            }
        }
        let n = out.len().min(self.chunk.len());
        out[..n].copy_from_slice(&self.chunk.split_to(n));
        Ok(n)
    }
}

/// An access token by the client-credentials grant, for the admin scope.
async fn admin_token(
    client: &reqwest::Client,
    config: &BootstrapConfig,
    id: &str,
    secret: &Secret<String>,
) -> Result<Secret<String>, String> {
    let endpoint = match (&config.token_endpoint, &config.issuer) {
        (Some(endpoint), _) => endpoint.clone(),
        (None, Some(issuer)) => {
            #[derive(serde::Deserialize)]
            struct Discovery {
                token_endpoint: String,
            }
            let url = format!(
                "{}/.well-known/openid-configuration",
                issuer.trim_end_matches('/')
            );
            let answer = client.get(&url).timeout(TOKEN_TIMEOUT).send().await;
            match answer.and_then(reqwest::Response::error_for_status) {
                Ok(response) => {
                    response
                        .json::<Discovery>()
                        .await
                        .map_err(|e| format!("discovery at {url}: {e}"))?
                        .token_endpoint
                }
                Err(e) => return Err(format!("discovery at {url}: {e}")),
            }
        }
        (None, None) => return Err("no OIDC_TOKEN_ENDPOINT or OIDC_IDP_ADDRESS_FOR_SERVER".into()),
    };
    #[derive(serde::Deserialize)]
    struct Token {
        access_token: String,
    }
    let scope = config.scopes.join(" ");
    let mut form = vec![("grant_type", "client_credentials")];
    if !scope.is_empty() {
        form.push(("scope", scope.as_str()));
    }
    let answer = client
        .post(&endpoint)
        .timeout(TOKEN_TIMEOUT)
        .basic_auth(id, Some(secret.expose()))
        .form(&form)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .map_err(|e| format!("token endpoint {endpoint}: {e}"))?;
    answer
        .json::<Token>()
        .await
        .map(|token| Secret::new(token.access_token))
        .map_err(|e| format!("token endpoint {endpoint}: {e}"))
}
