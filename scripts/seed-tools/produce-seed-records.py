"""Produces records sealed as the original .NET KeyValueApi sealed them, for the end-to-end test
of `kv-writer migrate-seed-topic`: an independent implementation (pyca/cryptography's AES, and
kafka-python as the client) of what the migrator decrypts.

Each of the key, the value, and every header's name and value is AES-256-CBC with PKCS#7
padding under a fresh random 16-byte IV, stored as IV || ciphertext; a header name, a string in
Kafka, is the standard base64 of that. A null value is a tombstone (the key is still sealed).

Reads one JSON document on stdin:
  {"bootstrap": "host:port", "topic": "...", "key_hex": "<64 hex>",
   "records": [{"key": "k", "value": "v" or null, "headers": {"name": "value"},
                "partition": 0, "timestamp_ms": 1700000000000, "plain": false}, ...]}
`plain: true` produces the key and value unsealed (a record the migrator must refuse). Prints one
line per record, "partition offset", in order.
"""

import base64
import json
import os
import sys

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from kafka import KafkaProducer


def seal(key: bytes, plain: bytes) -> bytes:
    iv = os.urandom(16)
    padder = padding.PKCS7(128).padder()
    padded = padder.update(plain) + padder.finalize()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    return iv + encryptor.update(padded) + encryptor.finalize()


def main() -> None:
    spec = json.load(sys.stdin)
    key = bytes.fromhex(spec["key_hex"])
    assert len(key) == 32, "AES-256 takes a 32-byte key"
    producer = KafkaProducer(bootstrap_servers=spec["bootstrap"], acks="all", retries=5)
    sent = []
    for record in spec["records"]:
        plain = record.get("plain", False)
        value = record.get("value")
        user_key = record["key"].encode()
        if plain:
            record_key = user_key
            payload = None if value is None else value.encode()
        else:
            record_key = seal(key, user_key)
            payload = None if value is None else seal(key, value.encode())
        headers = [
            (base64.b64encode(seal(key, name.encode())).decode(), seal(key, text.encode()))
            for name, text in record.get("headers", {}).items()
        ]
        sent.append(
            producer.send(
                spec["topic"],
                key=record_key,
                value=payload,
                headers=headers,
                partition=record.get("partition"),
                timestamp_ms=record.get("timestamp_ms"),
            )
        )
        # One at a time, so records of one partition land in the order given.
        producer.flush()
    for future in sent:
        metadata = future.get(timeout=30)
        print(metadata.partition, metadata.offset, flush=True)
    producer.close()


if __name__ == "__main__":
    main()
