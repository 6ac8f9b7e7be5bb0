//! Kafka client set-up and the explicit classification of rdkafka errors.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaErrorCode as Code;

use crate::settings::KafkaProperties;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientRole {
    Producer,
    Consumer,
    Admin,
}

/// Properties only consumers understand; a producer given them logs a warning per property.
const CONSUMER_ONLY: &[&str] = &[
    "group.id",
    "group.instance.id",
    "group.protocol",
    "enable.auto.commit",
    "auto.commit.interval.ms",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "max.poll.interval.ms",
    "isolation.level",
    "fetch.min.bytes",
    "fetch.max.bytes",
    "fetch.wait.max.ms",
    "fetch.message.max.bytes",
    "max.partition.fetch.bytes",
    "queued.min.messages",
    "queued.max.messages.kbytes",
    "enable.partition.eof",
    "check.crcs",
    "partition.assignment.strategy",
];

/// Properties only producers understand.
const PRODUCER_ONLY: &[&str] = &[
    "acks",
    "request.required.acks",
    "enable.idempotence",
    "enable.gapless.guarantee",
    "linger.ms",
    "queue.buffering.max.ms",
    "queue.buffering.max.messages",
    "queue.buffering.max.kbytes",
    "batch.num.messages",
    "batch.size",
    "message.timeout.ms",
    "delivery.timeout.ms",
    "request.timeout.ms",
    "compression.type",
    "compression.codec",
    "compression.level",
    "partitioner",
    "sticky.partitioning.linger.ms",
    "retries",
    "message.send.max.retries",
    "retry.backoff.ms",
    "transactional.id",
    "transaction.timeout.ms",
    "max.in.flight",
    "max.in.flight.requests.per.connection",
];

fn belongs_to(role: ClientRole, property: &str) -> bool {
    match role {
        ClientRole::Producer => !CONSUMER_ONLY.contains(&property),
        ClientRole::Consumer => !PRODUCER_ONLY.contains(&property),
        ClientRole::Admin => {
            !CONSUMER_ONLY.contains(&property) && !PRODUCER_ONLY.contains(&property)
        }
    }
}

/// A client config: the role's `defaults`, then the user's `KAFKA_*` properties on top, so users
/// can override any default. Callers set what typed settings decide afterwards.
pub fn client_config(
    defaults: &[(&str, &str)],
    properties: &KafkaProperties,
    role: ClientRole,
) -> ClientConfig {
    let mut config = ClientConfig::new();
    for (name, value) in defaults {
        config.set(*name, *value);
    }
    for (name, value) in properties.iter() {
        if belongs_to(role, name) {
            config.set(name, value);
        }
    }
    config
}

/// What every producer of this project starts from (the writer's, and the TTL sweeper's in the
/// reader): idempotent, so a retry neither duplicates nor reorders a partition's records; keys
/// on the partitions the Java client picks; a few milliseconds of batching. `KAFKA_*` properties
/// override each.
pub const PRODUCER_DEFAULTS: [(&str, &str); 3] = [
    ("enable.idempotence", "true"),
    // Same partition for the same key as Java clients, so mixed producers agree.
    ("partitioner", "murmur2_random"),
    // Many concurrent writes share batches; 5 ms costs little latency.
    ("linger.ms", "5"),
];

/// What a caller should do about a Kafka error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KafkaErrorClass {
    /// Unreachable, slow or briefly unable to serve: retrying later may succeed (HTTP 503).
    Retryable,
    /// The record is larger than the producer or the broker accepts (HTTP 413).
    TooLarge,
    /// Retrying will not help: authorization, configuration, a fenced or fatal producer.
    Fatal,
}

pub fn classify(error: &KafkaError) -> KafkaErrorClass {
    match error {
        KafkaError::Canceled => KafkaErrorClass::Retryable,
        other => other
            .rdkafka_error_code()
            .map_or(KafkaErrorClass::Fatal, classify_code),
    }
}

pub fn classify_code(code: RDKafkaErrorCode) -> KafkaErrorClass {
    match code {
        Code::MessageSizeTooLarge | Code::MessageBatchTooLarge | Code::InvalidMessageSize => {
            KafkaErrorClass::TooLarge
        }
        Code::MessageTimedOut
        | Code::AllBrokersDown
        | Code::BrokerTransportFailure
        | Code::Resolve
        | Code::OperationTimedOut
        | Code::TimedOutQueue
        | Code::QueueFull
        | Code::Retry
        | Code::PurgeQueue
        | Code::PurgeInflight
        | Code::LeaderNotAvailable
        | Code::NotLeaderForPartition
        | Code::RequestTimedOut
        | Code::BrokerNotAvailable
        | Code::ReplicaNotAvailable
        | Code::NetworkException
        | Code::NotEnoughReplicas
        | Code::NotEnoughReplicasAfterAppend
        | Code::UnknownTopicOrPartition
        | Code::UnknownPartition
        | Code::UnknownTopic
        | Code::KafkaStorageError
        | Code::ThrottlingQuotaExceeded
        | Code::FencedLeaderEpoch
        | Code::UnknownLeaderEpoch
        | Code::CoordinatorLoadInProgress
        | Code::CoordinatorNotAvailable
        | Code::NotCoordinator
        | Code::RebootstrapRequired => KafkaErrorClass::Retryable,
        _ => KafkaErrorClass::Fatal,
    }
}

/// Errors after which a producer's idempotence state (producer id, epoch, sequence numbers) is
/// out of step with the broker, so every later write on it would fail too: both roles that
/// produce replace such a producer. `Unknown` is what some Kafka-compatible brokers answer for a
/// producer id they lost in a restart.
pub fn breaks_idempotence(error: &KafkaError) -> bool {
    matches!(
        error.rdkafka_error_code(),
        Some(
            Code::Fatal
                | Code::Unknown
                | Code::OutOfOrderSequenceNumber
                | Code::InvalidProducerEpoch
                | Code::InvalidProducerIdMapping
                | Code::UnknownProducerId
                | Code::ProducerFenced
        )
    )
}

/// The configuration a topic of this service gets unless told otherwise (docs/operations.md,
/// "Topic settings"): compacted, never deleted by time, recent versions kept for a while.
pub const SAFE_TOPIC_CONFIG: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("retention.ms", "-1"),
    ("min.compaction.lag.ms", "900000"),
];

/// Creates `topic` with `partitions` partitions unless it exists, with the broker's default
/// replication factor (`default.replication.factor`) unless `replication` says otherwise, and
/// [`SAFE_TOPIC_CONFIG`] under `topic_config`. Used by the topic script; production topics are
/// often created by their operators (see docs/operations.md).
pub async fn create_topic(
    properties: &KafkaProperties,
    topic: &str,
    partitions: i32,
    replication: Option<i32>,
    topic_config: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&[], properties, ClientRole::Admin).create()?;
    // -1 asks the broker for its default (KIP-464).
    let replication = TopicReplication::Fixed(replication.unwrap_or(-1));
    let mut new_topic = NewTopic::new(topic, partitions, replication);
    for (name, value) in SAFE_TOPIC_CONFIG {
        if !topic_config.iter().any(|(given, _)| given == name) {
            new_topic = new_topic.set(name, value);
        }
    }
    for (name, value) in topic_config {
        new_topic = new_topic.set(name, value);
    }
    // The request's own timeout too: a broker that never answers CreateTopics (librdkafka's
    // MockCluster) would otherwise hold the caller for the socket timeout, a minute.
    let options = AdminOptions::new()
        .operation_timeout(Some(timeout))
        .request_timeout(Some(timeout));
    let results = admin.create_topics([&new_topic], &options).await?;
    for result in results {
        match result {
            Ok(_) | Err((_, Code::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// The topic's configuration as the broker reports it (DescribeConfigs): `cleanup.policy`,
/// `delete.retention.ms`, `retention.ms` and the rest, by name. Entries without a value are left
/// out.
pub async fn topic_config(
    properties: &KafkaProperties,
    topic: &str,
    timeout: Duration,
) -> Result<BTreeMap<String, String>, KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&[], properties, ClientRole::Admin).create()?;
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &options)
        .await?;
    let mut config = BTreeMap::new();
    for result in results {
        let resource = result.map_err(KafkaError::AdminOp)?;
        for entry in resource.entries {
            if let Some(value) = entry.value {
                config.insert(entry.name, value);
            }
        }
    }
    Ok(config)
}

/// The Kafka cluster's id, as the broker's metadata names it; `None` when no broker answered
/// within `timeout` or it names none. Blocking: call it off the async runtimes.
pub fn cluster_id(properties: &KafkaProperties, timeout: Duration) -> Option<String> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&[], properties, ClientRole::Admin)
            .create()
            .ok()?;
    admin
        .inner()
        .fetch_cluster_id(timeout)
        .filter(|id| !id.is_empty())
}

/// A topic whose configuration would lose keys, refused at start-up because
/// `KV_API_REQUIRE_COMPACTED_TOPIC=true`.
#[derive(Debug, thiserror::Error)]
#[error("topic {topic}: {reason} (KV_API_REQUIRE_COMPACTED_TOPIC=true refuses to start)")]
pub struct UnsafeTopic {
    topic: String,
    reason: String,
}

/// Reads the topic's configuration at start-up and says, loudly, what in it would lose keys;
/// with `require_compacted` that refuses start-up, as does a configuration the broker will not
/// describe. The configuration is returned for the role's own checks.
pub async fn check_topic_config(
    properties: &KafkaProperties,
    topic: &str,
    require_compacted: bool,
    timeout: Duration,
) -> Result<Option<BTreeMap<String, String>>, UnsafeTopic> {
    let refuse = |reason: String| UnsafeTopic {
        topic: topic.to_owned(),
        reason,
    };
    let config = match topic_config(properties, topic, timeout).await {
        Ok(config) => config,
        Err(error) if require_compacted => {
            return Err(refuse(format!("cannot read its configuration: {error}")))
        }
        Err(error) => {
            tracing::warn!(%topic, %error, "cannot read the topic's configuration: its cleanup policy and retention are not checked");
            return Ok(None);
        }
    };
    let problems = topic_config_problems(&config);
    if let Some(first) = problems.first() {
        if require_compacted {
            return Err(refuse(problems.join("; ")));
        }
        tracing::warn!(%topic, "UNSAFE TOPIC CONFIGURATION: {first}; see docs/operations.md, \"Topic settings\"");
        for problem in &problems[1..] {
            tracing::warn!(%topic, "UNSAFE TOPIC CONFIGURATION: {problem}");
        }
    }
    tracing::info!(
        %topic,
        cleanup_policy = config.get("cleanup.policy").map(String::as_str),
        retention_ms = config.get("retention.ms").map(String::as_str),
        delete_retention_ms = config.get("delete.retention.ms").map(String::as_str),
        "topic configuration read"
    );
    Ok(Some(config))
}

/// How long start-up waits for a topic's configuration.
pub const TOPIC_CONFIG_TIMEOUT: Duration = Duration::from_secs(10);

/// Whether the topic's `cleanup.policy` includes `compact` (Kafka's default is `delete`).
pub fn is_compacted(config: &BTreeMap<String, String>) -> bool {
    config
        .get("cleanup.policy")
        .is_some_and(|policy| policy.split(',').any(|p| p.trim() == "compact"))
}

/// How long a compacted topic keeps tombstones (`delete.retention.ms`); `None` for a topic that
/// is not compacted or does not say.
pub fn compacted_delete_retention(config: &BTreeMap<String, String>) -> Option<Duration> {
    config
        .get("delete.retention.ms")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
        .filter(|_| is_compacted(config))
}

/// How long a compacted topic keeps every record uncompacted (`min.compaction.lag.ms`, Kafka's
/// default 0); `None` for a topic that is not compacted or does not say.
pub fn compacted_min_lag(config: &BTreeMap<String, String>) -> Option<Duration> {
    config
        .get("min.compaction.lag.ms")
        .and_then(|ms| ms.parse::<u64>().ok())
        .map(Duration::from_millis)
        .filter(|_| is_compacted(config))
}

/// What is unsafe in a topic's configuration for a key-value store, one sentence each: a
/// `delete` policy or a finite `retention.ms`/`retention.bytes` drops live keys once they are old
/// or the log is large, silently and for good.
pub fn topic_config_problems(config: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let policy = config
        .get("cleanup.policy")
        .map_or("delete", String::as_str);
    let compacted = policy.split(',').any(|p| p.trim() == "compact");
    if !compacted {
        problems.push(format!(
            "cleanup.policy is {policy:?}, not compact: keys not written again within the \
             retention are deleted from the topic, and a replica rebuilt later loses them"
        ));
    }
    for name in ["retention.ms", "retention.bytes"] {
        if let Some(value) = config.get(name).filter(|v| v.trim() != "-1") {
            if policy.contains("delete") || !compacted {
                problems.push(format!(
                    "{name} is {value}, not -1, under a delete policy: old keys are dropped"
                ));
            }
        }
    }
    problems
}

pub use kv_wire::partition::{kafka_partition, murmur2};

#[cfg(test)]
mod tests {
    use rdkafka::consumer::BaseConsumer;
    use rdkafka::producer::BaseProducer;

    /// librdkafka refuses a mechanism it was built without ("No provider for SASL mechanism",
    /// "sasl.oauthbearer.method=oidc requires libcurl") when the client is created.
    #[test]
    fn the_client_is_built_with_gssapi_and_oauthbearer_oidc() {
        let kerberos = [
            ("bootstrap.servers", "127.0.0.1:1"),
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "GSSAPI"),
            ("sasl.kerberos.service.name", "kafka"),
            // No kinit here: the test machine has no Kerberos, and creating needs no ticket.
            ("sasl.kerberos.kinit.cmd", "true"),
        ];
        let oidc = [
            ("bootstrap.servers", "127.0.0.1:1"),
            ("security.protocol", "sasl_plaintext"),
            ("sasl.mechanism", "OAUTHBEARER"),
            ("sasl.oauthbearer.method", "oidc"),
            ("sasl.oauthbearer.client.id", "kv"),
            ("sasl.oauthbearer.client.secret", "secret"),
            (
                "sasl.oauthbearer.token.endpoint.url",
                "http://127.0.0.1:1/token",
            ),
        ];
        for properties in [&kerberos[..], &oidc[..]] {
            let mut config = rdkafka::ClientConfig::new();
            for (name, value) in properties {
                config.set(*name, *value);
            }
            config
                .create::<BaseProducer>()
                .unwrap_or_else(|e| panic!("{properties:?}: {e}"));
            config
                .set("group.id", "sasl-check")
                .create::<BaseConsumer>()
                .unwrap_or_else(|e| panic!("{properties:?}: {e}"));
        }
    }

    use super::*;

    #[test]
    fn broker_outages_are_retryable_and_size_errors_are_not() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(Code::MessageTimedOut)),
            KafkaErrorClass::Retryable
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(Code::QueueFull)),
            KafkaErrorClass::Retryable
        );
        assert_eq!(
            classify(&KafkaError::MessageProduction(Code::MessageSizeTooLarge)),
            KafkaErrorClass::TooLarge
        );
    }

    #[test]
    fn authorization_failures_are_fatal() {
        assert_eq!(
            classify(&KafkaError::MessageProduction(
                Code::TopicAuthorizationFailed
            )),
            KafkaErrorClass::Fatal
        );
        assert_eq!(
            classify(&KafkaError::ClientCreation("bad config".to_owned())),
            KafkaErrorClass::Fatal
        );
    }

    #[test]
    fn each_role_gets_only_the_properties_it_understands() {
        let env = crate::settings::Env::from_pairs([
            ("KAFKA_BOOTSTRAP_SERVERS", "b:9092"),
            ("KAFKA_LINGER_MS", "20"),
            ("KAFKA_FETCH_WAIT_MAX_MS", "50"),
            ("KAFKA_CLIENT_ID", "kv"),
            ("KV_API_KAFKA_KEY_VALUE_TOPIC", "t"),
            ("KV_API_DISABLE_API_AUTH", "true"),
        ])
        .expect("environment");
        let settings = crate::settings::CoreSettings::from_env(&env).expect("settings");
        let producer = client_config(&[("linger.ms", "5")], &settings.kafka, ClientRole::Producer);
        assert_eq!(
            producer.get("linger.ms"),
            Some("20"),
            "user value wins over default"
        );
        assert_eq!(producer.get("fetch.wait.max.ms"), None);
        assert_eq!(producer.get("client.id"), Some("kv"));
        let consumer = client_config(&[], &settings.kafka, ClientRole::Consumer);
        assert_eq!(consumer.get("linger.ms"), None);
        assert_eq!(consumer.get("fetch.wait.max.ms"), Some("50"));
    }

    #[test]
    fn a_delete_policy_or_a_finite_retention_under_it_is_a_problem() {
        let config = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        assert!(topic_config_problems(&config(&[
            ("cleanup.policy", "compact"),
            ("retention.ms", "-1")
        ]))
        .is_empty());
        assert!(
            topic_config_problems(&config(&[
                ("cleanup.policy", "compact"),
                ("retention.ms", "604800000")
            ]))
            .is_empty(),
            "retention does not delete from a purely compacted topic"
        );
        let problems = topic_config_problems(&config(&[
            ("cleanup.policy", "delete"),
            ("retention.ms", "604800000"),
        ]));
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("not compact"));
        let problems = topic_config_problems(&config(&[
            ("cleanup.policy", "compact,delete"),
            ("retention.ms", "604800000"),
        ]));
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            topic_config_problems(&config(&[])).len(),
            1,
            "Kafka's default is delete"
        );
    }
}
