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

/// Creates `topic` with `partitions` partitions unless it exists. Used by the topic script and
/// the tests; production topics are created by their operators (see docs/operations.md).
pub async fn create_topic(
    properties: &KafkaProperties,
    topic: &str,
    partitions: i32,
    topic_config: &[(&str, &str)],
    timeout: Duration,
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> =
        client_config(&[], properties, ClientRole::Admin).create()?;
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (name, value) in topic_config {
        new_topic = new_topic.set(name, value);
    }
    let options = AdminOptions::new().operation_timeout(Some(timeout));
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

#[cfg(test)]
mod tests {
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
}
