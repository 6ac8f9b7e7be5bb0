#!/usr/bin/env bash
# Validates the deployment files with the tools that run without a container engine:
# docker-compose's own parser, yamllint, and (when a helm binary is on PATH) helm lint/template.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

apt_install docker-compose yamllint
for profile in "" multiinstance; do
    docker-compose ${profile:+--profile "$profile"} -f compose/docker-compose.yml config -q
done
python3 -m json.tool compose/keycloak/demo-realm.json >/dev/null
# Helm templates are not YAML until rendered; lint what is.
yamllint -c .yamllint.yml compose/docker-compose.yml deploy/helm/kafka-kv/Chart.yaml \
    deploy/helm/kafka-kv/values.yaml docs/openapi-writer.yaml docs/openapi-reader.yaml
if command -v helm >/dev/null; then
    helm lint deploy/helm/kafka-kv --set auth.disabled=true
    for role in writer reader; do
        helm template "kv-$role" deploy/helm/kafka-kv --set role="$role" --set auth.disabled=true \
            | yamllint -c .yamllint.yml -
    done
else
    log "no helm binary: chart templates not rendered (see deploy/README.md)"
fi
log "deployment files are valid"
