//! The command line: `--help` lists every variable the role reads, `--version`, `check-config`
//! against a broker that is down and one that is up, and `healthcheck` as a container runs it.

use std::time::Duration;

use kv_core::settings::catalogue::Role;
use kv_testkit::services::{check_command_line, check_healthcheck, run_command_to_exit};
use kv_testkit::topic::{create_topic, random_topic};
use kv_testkit::{service_env, Broker, Service};

use crate::WRITER;

#[test]
fn help_lists_every_variable_and_check_config_names_a_broker_that_is_down() {
    check_command_line(WRITER, Role::Writer);
}

#[tokio::test]
async fn check_config_finds_the_broker_the_topic_and_its_partitions() {
    let broker = Broker::start();
    let topic = random_topic("check-config");
    create_topic(&broker.bootstrap_servers(), &topic, 3, &[]).await;
    let env = service_env(&broker, &topic);
    let (code, report) =
        run_command_to_exit(WRITER, &["check-config"], &env, Duration::from_secs(60));
    assert_eq!(code, Some(0), "{report}");
    assert!(report.contains("ok    broker: "), "{report}");
    assert!(
        report.contains(&format!("ok    topic: {topic}: 3 partition(s)")),
        "{report}"
    );
    assert!(report.contains("configuration OK"), "{report}");
}

#[tokio::test]
async fn healthcheck_exits_zero_for_a_ready_service_and_one_for_none() {
    let broker = Broker::start();
    let topic = random_topic("healthcheck");
    create_topic(&broker.bootstrap_servers(), &topic, 1, &[]).await;
    let service = Service::start(WRITER, &service_env(&broker, &topic));
    check_healthcheck(WRITER, &service).await;
}
