#!/usr/bin/env bash
# Checks the deployment files with the real tools, no cluster or container engine needed
# (installed once by scripts/install-deploy-tools.sh):
#   - the Helm chart rendered by Helm 4 for every supported shape (deploy/helm/kafka-kv/ci/),
#     linted, every manifest validated strictly against the Kubernetes API schemas and yamllint;
#     every values file in deploy/helm/bad-values/ must be refused by values.schema.json;
#   - the alerts the chart renders: promtool check rules, and promtool test rules on synthetic
#     series (deploy/prometheus/*.test.yaml);
#   - the Dockerfile with hadolint, compose with docker-compose's own parser (and its health
#     checks, start order and ports against `make run`), the OpenAPI
#     documents with Redocly's linter, the YAML with yamllint.
# Fails on any problem. Part of `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

start=$(date +%s)
eval "$(scripts/install-deploy-tools.sh)"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

log "yamllint"
"$KV_DEPLOY_PYTHON" -m yamllint --strict -c .yamllint.yml .yamllint.yml compose/docker-compose.yml \
    deploy/helm/kafka-kv/Chart.yaml deploy/helm/kafka-kv/values.yaml deploy/helm/kafka-kv/ci \
    deploy/helm/bad-values deploy/prometheus docs/openapi-writer.yaml docs/openapi-reader.yaml
python3 -m json.tool deploy/helm/kafka-kv/values.schema.json >/dev/null
python3 -m json.tool compose/keycloak/demo-realm.json >/dev/null

log "helm chart: render, lint and validate every shape"
"$KV_DEPLOY_PYTHON" scripts/deploy-tools/render-chart.py deploy/helm/kafka-kv \
    deploy/helm/kafka-kv/ci deploy/helm/bad-values "$work"

log "alerts: promtool check rules, promtool test rules"
"$PROMTOOL" check rules "$work"/*.rules.yaml
# Test files name their rule files relative to themselves: beside what was rendered.
cp deploy/prometheus/*.test.yaml "$work/"
(cd "$work" && "$PROMTOOL" test rules ./*.test.yaml)

log "Dockerfile: hadolint"
"$HADOLINT" --no-color Dockerfile
log "compose: docker-compose config"
docker-compose -f compose/docker-compose.yml config -q
docker-compose --profile multiinstance -f compose/docker-compose.yml config \
    | "$KV_DEPLOY_PYTHON" scripts/deploy-tools/check-compose.py

log "OpenAPI documents: redocly lint"
if ! report=$("$REDOCLY" lint --format=summary docs/openapi-writer.yaml docs/openapi-reader.yaml 2>&1); then
    printf '%s\n' "$report" >&2
    die "redocly lint found errors in the OpenAPI documents"
fi
# Its summary: warnings by rule (the recommended rule set); errors fail above.
printf '%s\n' "$report" | grep -e '^warning' -e 'warnings\.' >&2 || true

log "deployment files are valid ($(($(date +%s) - start)) s)"
