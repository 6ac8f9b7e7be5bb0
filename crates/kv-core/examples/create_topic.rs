//! Creates a topic unless it exists: `create_topic NAME [PARTITIONS] [name=value ...]`.
//! Connection settings come from the same KAFKA_* variables the services read.

use std::process::ExitCode;
use std::time::Duration;

use kv_core::kafka::create_topic;
use kv_core::settings::{Env, KafkaProperties};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(topic) = args.first() else {
        eprintln!("usage: create_topic NAME [PARTITIONS] [config.name=value ...]");
        return ExitCode::from(2);
    };
    let partitions = match args.get(1).map(|p| p.parse::<i32>()) {
        None => 3,
        Some(Ok(n)) if n > 0 => n,
        Some(_) => {
            eprintln!("PARTITIONS must be a positive number");
            return ExitCode::from(2);
        }
    };
    let config: Vec<(&str, &str)> = args
        .iter()
        .skip(2)
        .filter_map(|pair| pair.split_once('='))
        .collect();
    let properties = match Env::from_process().and_then(|env| KafkaProperties::from_env(&env)) {
        Ok(properties) => properties,
        Err(error) => {
            eprintln!("invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    match create_topic(
        &properties,
        topic,
        partitions,
        &config,
        Duration::from_secs(30),
    )
    .await
    {
        Ok(()) => {
            println!("topic {topic} ready ({partitions} partitions)");
            ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("cannot create topic {topic}: {error}");
            ExitCode::FAILURE
        }
    }
}
