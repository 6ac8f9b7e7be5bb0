"""Checks what docker-compose's parser cannot: compose/docker-compose.yml (as `docker-compose
config` resolved it, on standard input) gives every long-running container a health check,
starts each one only once what it depends on is healthy (or, for a one-shot job, completed),
and publishes the services on the ports `make run` uses (scripts/run.sh)."""

import re
import sys

import yaml

# scripts/run.sh's defaults: WRITER_PORT and READER_PORT.
with open("scripts/run.sh") as f:
    run = f.read()
expected = {
    "kv-writer": re.search(r'writer_port="\$\{WRITER_PORT:-(\d+)\}"', run).group(1),
    "kv-reader": re.search(r'reader_port="\$\{READER_PORT:-(\d+)\}"', run).group(1),
}

config = yaml.safe_load(sys.stdin)
services = config["services"]
one_shot = {name for name, s in services.items() if s.get("restart") == "on-failure"}
problems = []
published = {}
for name, service in sorted(services.items()):
    if name not in one_shot and "healthcheck" not in service:
        problems.append(f"{name} has no health check")
    for dependency, how in (service.get("depends_on") or {}).items():
        wanted = "service_completed_successfully" if dependency in one_shot else "service_healthy"
        if how.get("condition") != wanted:
            problems.append(f"{name} starts before {dependency} is {wanted.split('_', 1)[1]}")
    for port in service.get("ports", []):
        host = str(port["published"]) if isinstance(port, dict) else str(port).split(":")[0]
        if host in published:
            problems.append(f"{name} and {published[host]} both publish port {host}")
        published[host] = name
for name, port in expected.items():
    if published.get(port) != name:
        problems.append(f"{name} is not on port {port} as in `make run` (port {port}: {published.get(port)})")
if problems:
    sys.exit("compose: " + "; ".join(problems))
ports = ", ".join(f"{n} {p}" for p, n in sorted(published.items(), key=lambda kv: int(kv[0])))
print(f"compose: {len(services)} services, health checks and start order hold; ports {ports}")
