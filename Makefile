# The two commands first: `make run` and `make test`. See README.md.
.PHONY: run test drills build lint fmt broker-start broker-stop clean-run bench bench-quick

run:
	scripts/run.sh

test:
	scripts/test.sh

# Fault and abuse drills (kill -9 during replay, broker outage under load, poison records,
# HTTP and token abuse); each prints its figure. See docs/reliability.md.
drills:
	scripts/drills.sh

# The service beside Redis, nginx and raw rdkafka clients, on loopback; see docs/benchmarks.md.
bench:
	scripts/bench.sh full

# The same figures on fewer keys and shorter runs: a smoke test for CI.
bench-quick:
	scripts/bench.sh quick

build:
	cargo build --locked --workspace --bins

lint:
	cargo fmt --all -- --check
	cargo clippy --locked --workspace --all-targets --all-features -- -D warnings

fmt:
	cargo fmt --all

broker-start:
	scripts/broker.sh start

broker-stop:
	scripts/broker.sh stop

# Forget the local broker's data and the dev reader's replica.
clean-run: broker-stop
	rm -rf target/kv-run
