//! Drill 6 of docs/reliability.md: the decoder properties of `decoders_never_panic`, run on far
//! more inputs. Ignored by `cargo test`; `make drills` runs it and prints its figure.

use kv_core::crypto::TopicCipher;
use kv_testkit::decoders::*;
use proptest::strategy::Strategy;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};

/// Inputs per property; KV_DRILL_DECODER_CASES overrides it.
const CASES: u32 = 200_000;

fn cases() -> u32 {
    std::env::var("KV_DRILL_DECODER_CASES")
        .ok()
        .and_then(|cases| cases.parse().ok())
        .unwrap_or(CASES)
}

/// Runs one property on `cases` generated inputs; a panic inside counts as a failure, and the
/// input proptest shrinks it to is part of the message.
fn check<S: Strategy>(
    name: &str,
    strategy: S,
    property: impl Fn(S::Value) -> Result<(), TestCaseError>,
) -> u32
where
    S::Value: std::fmt::Debug,
{
    let cases = cases();
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    match runner.run(&strategy, property) {
        Ok(()) => cases,
        Err(TestError::Fail(why, input)) => panic!("{name}: {why} for {input:?}"),
        Err(TestError::Abort(why)) => panic!("{name}: aborted: {why}"),
    }
}

#[test]
#[ignore = "a drill: make drills runs it"]
fn drill_decoders_fed_arbitrary_bytes_never_panic_and_never_accept_a_forgery() {
    let cipher = TopicCipher::new(&topic_key());
    let codec = encrypted_codec();
    let properties = [
        check("plaintext record", raw_record(), |record| {
            plaintext_record_decodes_or_is_refused(record);
            Ok(())
        }),
        check("encrypted record", raw_record(), |record| {
            encrypted_record_is_never_forged(&codec, record)
        }),
        check("envelope with a bit flipped", envelope_damage(), |damage| {
            flipped_envelope_is_refused(&cipher, damage)
        }),
        check("truncated envelope", envelope_damage(), |damage| {
            truncated_envelope_is_refused(&cipher, damage)
        }),
        check(
            "consistency token",
            token_text(),
            token_parses_or_is_refused,
        ),
    ];
    let inputs: u32 = properties.iter().sum();
    println!(
        "drill decoders fed arbitrary bytes: {} properties, {inputs} inputs, panics = 0, forgeries accepted = 0",
        properties.len()
    );
}
