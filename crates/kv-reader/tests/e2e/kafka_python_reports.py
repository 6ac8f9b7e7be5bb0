"""Reports produced by an agent that speaks Kafka, not HTTP (docs/wire-format.md, "Computed
state"), with kafka-python: on the partition Kafka's default partitioner gives the *state key*,
record key `<key> 0x1F <agent>`, header `X-KV-Report-Agent: <agent>`.

Reads one JSON document on stdin:
  {"bootstrap": "host:port", "topic": "...", "reports": [["key", "agent", "value"], ...]}
"""

import json
import sys

from kafka import KafkaProducer
from kafka.partitioner.default import murmur2


def main() -> None:
    spec = json.load(sys.stdin)
    producer = KafkaProducer(bootstrap_servers=spec["bootstrap"], acks="all", retries=5)
    partitions = sorted(producer.partitions_for(spec["topic"]))
    for key, agent, value in spec["reports"]:
        state_key = key.encode()
        partition = partitions[(murmur2(state_key) & 0x7FFFFFFF) % len(partitions)]
        producer.send(
            spec["topic"],
            key=state_key + b"\x1f" + agent.encode(),
            value=value.encode(),
            headers=[("X-KV-Report-Agent", agent.encode())],
            partition=partition,
        ).get(timeout=30)
    producer.flush()
    print("sent", len(spec["reports"]))


if __name__ == "__main__":
    main()
