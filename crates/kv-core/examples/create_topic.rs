//! Creates a topic unless it exists: `create_topic NAME [PARTITIONS] [name=value ...]`, with
//! the broker's default replication factor (or `replication.factor=N`) and, unless given, the
//! safe configuration of docs/operations.md (compacted, no time retention, a compaction lag).
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
    let mut config: Vec<(&str, &str)> = Vec::new();
    for pair in args.iter().skip(2) {
        match pair.split_once('=') {
            Some((name, value)) if !name.is_empty() => config.push((name, value)),
            _ => {
                eprintln!("{pair:?} is not name=value (a topic configuration such as cleanup.policy=compact)");
                return ExitCode::from(2);
            }
        }
    }
    let replication = match config
        .iter()
        .position(|(name, _)| *name == "replication.factor")
    {
        None => None,
        Some(at) => match config.remove(at).1.parse::<i32>() {
            Ok(n) if n > 0 => Some(n),
            _ => {
                eprintln!("replication.factor must be a positive number");
                return ExitCode::from(2);
            }
        },
    };
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
        replication,
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
