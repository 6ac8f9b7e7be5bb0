//! The command line: `--help` lists every variable the role reads, `--version`, `check-config`
//! against a broker that is down and one that is up, and `healthcheck` as a container runs it.

use kv_core::settings::catalogue::Role;
use kv_testkit::services::{check_command_line, check_config_finds_the_topic, check_healthcheck};

use crate::READER;

#[test]
fn help_lists_every_variable_and_check_config_names_a_broker_that_is_down() {
    check_command_line(READER, Role::Reader);
}

#[tokio::test]
async fn check_config_finds_the_broker_the_topic_and_its_partitions() {
    check_config_finds_the_topic(READER).await;
}

#[tokio::test]
async fn healthcheck_exits_zero_for_a_ready_service_and_one_for_none() {
    check_healthcheck(READER).await;
}
