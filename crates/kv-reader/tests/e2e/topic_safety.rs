//! Both services read the topic's configuration at start-up (DescribeConfigs): a topic that
//! would lose keys is said loudly, or refused with KV_API_REQUIRE_COMPACTED_TOPIC=true.

use std::time::Duration;

use kv_testkit::topic::{create_topic, random_topic};
use kv_testkit::{eventually, run_to_exit, service_env, Broker, Service, DEADLINE};

use crate::{writer, READER};

async fn topic_with(broker: &Broker, config: &[(&str, &str)]) -> String {
    let topic = random_topic("safety");
    create_topic(&broker.bootstrap_servers(), &topic, 1, config).await;
    topic
}

#[tokio::test]
async fn a_delete_policy_topic_is_said_loudly_by_both_services_at_start_up() {
    let broker = Broker::start();
    let topic = topic_with(
        &broker,
        &[("cleanup.policy", "delete"), ("retention.ms", "604800000")],
    )
    .await;
    let env = service_env(&broker, &topic);
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    for service in [&writer, &reader] {
        eventually("the unsafe-topic warning", DEADLINE, || async {
            let output = service.output();
            (output.contains("UNSAFE TOPIC CONFIGURATION")
                && output.contains("cleanup.policy is \"delete\""))
            .then_some(())
        })
        .await;
    }
}

#[tokio::test]
async fn with_require_compacted_topic_both_services_refuse_a_delete_policy_topic() {
    let broker = Broker::start();
    let unsafe_topic = topic_with(&broker, &[("cleanup.policy", "delete")]).await;
    let mut env = service_env(&broker, &unsafe_topic);
    env.push(("KV_API_REQUIRE_COMPACTED_TOPIC", "true".to_owned()));
    env.push(("KV_API_LISTEN", "127.0.0.1:0".to_owned()));
    for binary in [writer(), READER] {
        let (code, output) = run_to_exit(binary, &env, Duration::from_secs(30));
        assert!(
            matches!(code, Some(c) if c != 0),
            "{binary}: {code:?} {output}"
        );
        assert!(
            output.contains("KV_API_REQUIRE_COMPACTED_TOPIC") && output.contains("not compact"),
            "{binary}: {output}"
        );
    }

    let safe_topic = topic_with(
        &broker,
        &[("cleanup.policy", "compact"), ("retention.ms", "-1")],
    )
    .await;
    let mut env = service_env(&broker, &safe_topic);
    env.push(("KV_API_REQUIRE_COMPACTED_TOPIC", "true".to_owned()));
    let writer = Service::start(writer(), &env);
    let reader = Service::start(READER, &env);
    for service in [&writer, &reader] {
        assert!(
            !service.output().contains("UNSAFE TOPIC"),
            "{}",
            service.output()
        );
    }
}
