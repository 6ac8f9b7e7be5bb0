//! What encryption at rest costs a read: point lookups on a plaintext and an encrypted disk
//! store holding the same keys. `cargo run --release -p kv-reader --example at_rest_cost [KEYS] [READS]`

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Instant;

use kv_core::record::now_ms;
use kv_core::secret::Secret;
use kv_reader::settings::Storage;
use kv_reader::store::{Change, Store};

fn main() {
    let mut args = std::env::args().skip(1);
    let keys: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let reads: usize = args
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let names: Vec<Vec<u8>> = (0..keys)
        .map(|i| format!("key-{i:08}").into_bytes())
        .collect();
    let value = vec![b'v'; 100];
    let password = Secret::new("benchmark password".to_owned());
    let mut rates = Vec::new();
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().expect("dir");
        let storage = Storage::Disk {
            location: dir.path().to_owned(),
        };
        let store = Store::open(&storage, encrypted.then_some(&password)).expect("store");
        for (batch_index, batch) in names.chunks(10_000).enumerate() {
            let changes: Vec<Change<'_>> = batch
                .iter()
                .enumerate()
                .map(|(i, key)| Change::Put {
                    record_key: key,
                    user_key: Cow::Borrowed(key),
                    partition: 0,
                    offset: (batch_index * 10_000 + i) as i64,
                    correlation_id: None,
                    traceparent: None,
                    value: Cow::Borrowed(&value),
                    expires_at_ms: None,
                    precondition: None,
                    decided: None,
                })
                .collect();
            store
                .apply_at(
                    &changes,
                    &BTreeMap::from([(0, (batch_index * 10_000 + batch.len()) as i64)]),
                    now_ms(),
                    &|_| false,
                )
                .expect("apply");
        }
        let started = Instant::now();
        let mut found = 0usize;
        let mut at = 0x9e37_79b9usize;
        for _ in 0..reads {
            at = at.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let key = &names[(at >> 16) % keys];
            found += usize::from(store.get(key).expect("get").is_some());
        }
        let seconds = started.elapsed().as_secs_f64();
        assert_eq!(found, reads);
        let rate = reads as f64 / seconds;
        println!(
            "{:<10} {keys} keys, {reads} reads: {rate:>10.0} reads/s ({:.2} µs each)",
            if encrypted { "encrypted" } else { "plaintext" },
            seconds * 1e6 / reads as f64
        );
        rates.push(rate);
    }
    println!("encrypted / plaintext = {:.2}", rates[1] / rates[0]);
}
