"""Renders the Helm chart for every supported shape and checks what comes out.

Run by scripts/check-deploy.sh with the Python of the deploy-tools virtual environment
(scripts/install-deploy-tools.sh): helm-python-sdk (Helm 4 as a library), kubernetes-validate
and yamllint.

  python render-chart.py CHART SHAPES_DIR BAD_VALUES_DIR OUT_DIR

For each shape (SHAPES_DIR/*.yaml, a values file) it renders the chart as `helm template` would
(values.schema.json included), lints it (`helm lint --strict`), runs yamllint on the manifests,
validates every object strictly against the Kubernetes API schemas of each pinned version
(unknown fields are errors) and checks the chart's own promises (names, labels, pod hardening,
probes, the gateway's routes, the NetworkPolicy). Kinds of CRDs that kubernetes-validate has no
schema for (the Prometheus Operator's) are skipped by name and said so. The PrometheusRule of each shape is written to
OUT_DIR/<shape>.rules.yaml for promtool. Every file in BAD_VALUES_DIR must be refused
at render, at the value its second line names (`# at: /json/pointer`). Exits non-zero on any problem.
"""

import json
import os
import sys

import helm_python as helm
import kubernetes_validate
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

# The oldest Kubernetes the chart supports (Chart.yaml's kubeVersion) and the newest
# kubernetes-validate ships schemas for; both pinned here.
KUBE_VERSIONS = ("1.30.0", "1.37.0")
# CRDs kubernetes-validate has no schema for: validated by the checks below, not by an API schema.
CRD_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
NAMESPACE = "kv"

problems = []


class RulesDumper(yaml.SafeDumper):
    """Writes multi-line PromQL as literal blocks, as it stands in the template."""


RulesDumper.add_representer(
    str, lambda dumper, s: dumper.represent_scalar("tag:yaml.org,2002:str", s, style="|" if "\n" in s else None))


def problem(where, message):
    problems.append(f"{where}: {message}")
    print(f"  FAIL {message}")


def pod_spec(obj):
    return obj["spec"]["template"]["spec"]


def check_promises(shape, values, release, objects):
    """What the chart promises beyond the API schema."""
    role = values["role"]
    name = release if role in release else f"{release}-{role}"
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for obj in objects:
        labels = obj["metadata"].get("labels", {})
        for label in ("helm.sh/chart", "app.kubernetes.io/managed-by", "app.kubernetes.io/name",
                      "app.kubernetes.io/instance", "app.kubernetes.io/component"):
            if label not in labels:
                problem(shape, f"{obj['kind']}/{obj['metadata']['name']} lacks the label {label}")
        if not obj["metadata"]["name"].startswith(name):
            problem(shape, f"{obj['kind']}/{obj['metadata']['name']} is not named after {name}")
    gateway = [o for o in objects
               if o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "gateway"]
    check_gateway(shape, values, gateway)
    workloads = [o for o in objects if o["kind"] in ("Deployment", "StatefulSet") and o not in gateway]
    if len(workloads) != 1:
        problem(shape, f"expected one workload, got {len(workloads)}")
        return
    workload = workloads[0]
    disk = role == "reader" and values.get("reader", {}).get("storage", "disk") == "disk"
    sharded = role == "reader" and values.get("reader", {}).get("sharding", {}).get("enabled", False)
    expected_kind = "StatefulSet" if disk or sharded else "Deployment"
    if workload["kind"] != expected_kind:
        problem(shape, f"workload is a {workload['kind']}, expected a {expected_kind}")
    spec = pod_spec(workload)
    if spec.get("enableServiceLinks") is not False:
        problem(shape, "enableServiceLinks is not false")
    if spec.get("automountServiceAccountToken") is not False:
        problem(shape, "automountServiceAccountToken is not false")
    if spec.get("securityContext", {}).get("seccompProfile", {}).get("type") != "RuntimeDefault":
        problem(shape, "the pod's seccompProfile is not RuntimeDefault")
    container = spec["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    if not container.get("lifecycle", {}).get("preStop"):
        problem(shape, "no preStop pause")
    readiness = container["readinessProbe"]["httpGet"]["path"]
    expected = "/healthz" if role == "writer" else "/healthz/ready"
    if readiness != expected:
        problem(shape, f"readiness probe asks {readiness}, expected {expected}")
    if container["livenessProbe"]["httpGet"]["path"] != "/healthz/live":
        problem(shape, "liveness probe does not ask /healthz/live")
    for var, e in env.items():
        if any(s in var for s in ("PASSWORD", "SECRET")) and not var.endswith("_LOCATION") and "value" in e:
            problem(shape, f"{var} is set inline, not by reference to a Secret")
    auth_on = not values.get("auth", {}).get("disabled", False)
    if auth_on:
        wanted = ["KV_API_AUTH_READ"] if role == "reader" else ["KV_API_AUTH_WRITE", "KV_API_AUTH_DELETE"]
        for var in wanted:
            if not env.get(var, {}).get("value"):
                problem(shape, f"auth is on but {var} requires no scope")
    if sharded:
        shards = values.get("replicaCount", 2)
        if env.get("KV_API_SHARD", {}).get("value") != f"$(POD_INDEX)/{shards}":
            problem(shape, "KV_API_SHARD is not the pod's ordinal over replicaCount")
        if "pod-index" not in str(env.get("POD_INDEX", {}).get("valueFrom", "")):
            problem(shape, "POD_INDEX does not come from the pod's ordinal label")
        peers = env.get("KV_API_SHARD_PEERS", {}).get("value", "")
        if "{i}" not in peers or "-headless." not in peers:
            problem(shape, f"KV_API_SHARD_PEERS does not name each pod by the headless Service: {peers}")
    if disk or sharded:
        if workload["spec"].get("podManagementPolicy") != "Parallel":
            problem(shape, "the StatefulSet does not start its replicas in parallel")
        governing = workload["spec"].get("serviceName")
        if ("Service", governing) not in kinds:
            problem(shape, f"the StatefulSet's governing Service {governing} is not rendered")
    if role == "reader" and values.get("reader", {}).get("groupIdPerPod", True):
        if "$(POD_NAME)" not in env.get("KAFKA_GROUP_ID", {}).get("value", ""):
            problem(shape, "KAFKA_GROUP_ID is not per pod")
    if not any(o["kind"] == "PodDisruptionBudget" for o in objects):
        problem(shape, "no PodDisruptionBudget")
    probes = values.get("probes", {})
    for probe, key in (("liveness", "livenessProbe"), ("readiness", "readinessProbe"), ("startup", "startupProbe")):
        for timing, wanted in probes.get(probe, {}).items():
            if container[key].get(timing) != wanted:
                problem(shape, f"{key}.{timing} is {container[key].get(timing)}, the values say {wanted}")
    if values.get("configFile"):
        if env.get("KV_API_CONFIG_FILE", {}).get("value") != "/etc/kafka-kv/config.yaml":
            problem(shape, "KV_API_CONFIG_FILE does not name the mounted settings file")
        config = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == f"{name}-config"]
        file = yaml.safe_load(config[0]["data"]["config.yaml"]) if config else {}
        if {k: str(v) for k, v in values["configFile"].items()} != file:
            problem(shape, f"the settings file holds {file}, not configFile")
    if values.get("stateRules"):
        if env.get("KV_API_STATE_RULES", {}).get("value") != "/etc/kafka-kv/rules.yaml":
            problem(shape, "KV_API_STATE_RULES does not name the mounted rules file")
        config = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"] == f"{name}-config"]
        rules = config[0]["data"].get("rules.yaml") if config else None
        if rules is None or yaml.safe_load(rules) != yaml.safe_load(values["stateRules"]):
            problem(shape, "the rules file mounted is not stateRules")
        if "checksum/config" not in workload["spec"]["template"]["metadata"].get("annotations", {}):
            problem(shape, "no checksum/config annotation: a change of the rules would not roll the pods")
    mounts = {m["name"] for m in container.get("volumeMounts", [])}
    volumes = {v["name"] for v in spec.get("volumes", [])}
    for extra in values.get("extraVolumeMounts", []):
        if extra["name"] not in mounts:
            problem(shape, f"extraVolumeMounts {extra['name']} is not mounted")
    for extra in values.get("extraVolumes", []):
        if extra["name"] not in volumes:
            problem(shape, f"extraVolumes {extra['name']} is not a volume of the pod")
    policies = [o for o in objects if o["kind"] == "NetworkPolicy"]
    if values.get("networkPolicy", {}).get("enabled"):
        if len(policies) != 1:
            problem(shape, "networkPolicy.enabled but no NetworkPolicy")
        else:
            sources = [peer for rule in policies[0]["spec"]["ingress"] for peer in rule.get("from", [])]
            if not sources or any(peer == {} for peer in sources):
                problem(shape, "the NetworkPolicy admits everyone")


ROUTES = "deploy/helm/kafka-kv/files/gateway-routes.conf"


def check_gateway(shape, values, objects):
    """The gateway runs the routes file as it is in the repository, behind its Service and,
    when asked, an Ingress to that Service."""
    gateway = values.get("gateway", {})
    if not gateway.get("enabled"):
        if objects:
            problem(shape, "gateway objects rendered although gateway.enabled is false")
        return
    kinds = {o["kind"]: o for o in objects}
    for kind in ("ConfigMap", "Deployment", "Service"):
        if kind not in kinds:
            problem(shape, f"the gateway has no {kind}")
            return
    with open(ROUTES) as f:
        routes = f.read()
    if kinds["ConfigMap"]["data"]["kv-gateway-routes.conf"].strip() != routes.strip():
        problem(shape, f"the gateway's routes differ from {ROUTES}")
    default = kinds["ConfigMap"]["data"]["default.conf"]
    for upstream in (gateway["writer"], gateway["reader"]):
        if f"server {upstream};" not in default:
            problem(shape, f"the gateway does not route to {upstream}")
    if gateway.get("ingress", {}).get("enabled"):
        ingress = kinds.get("Ingress")
        backend = ingress and ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"]
        if backend != kinds["Service"]["metadata"]["name"]:
            problem(shape, f"the Ingress does not route to the gateway's Service: {backend}")


def check_shape(chart, chart_dir, path, out_dir, lint_config):
    shape = os.path.basename(path)
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    release = f"kv-{values['role']}"
    print(f"{shape}: release {release}")
    try:
        manifests = chart.render(values, name=release, namespace=NAMESPACE, is_install=True)
    except helm.HelmError as e:
        problem(shape, f"render failed: {e}")
        return
    report = helm.lint(chart_dir, values, strict=True,
                       namespace=NAMESPACE, kube_version="v" + KUBE_VERSIONS[0])
    for message in report.get("messages", []):
        # Severity 1 is "info" (an icon is recommended); warnings and errors fail.
        if message["severity"] >= 2:
            problem(shape, f"helm lint: {message['path']}: {message['error']}")
    for error in report.get("errors", []):
        problem(shape, f"helm lint: {error}")

    objects = []
    for template, text in sorted(manifests.items()):
        if template.endswith("NOTES.txt"):
            if values["role"] not in text:
                problem(shape, "NOTES.txt does not name the role")
            continue
        if not text.strip():
            continue
        for p in linter.run(text, lint_config):
            problem(shape, f"yamllint {template}:{p.line}:{p.column}: {p.desc} ({p.rule})")
        objects.extend(doc for doc in yaml.safe_load_all(text) if doc)

    skipped = set()
    for obj in objects:
        kind = (obj["apiVersion"], obj["kind"])
        label = f"{obj['kind']}/{obj['metadata']['name']}"
        if kind in CRD_KINDS:
            skipped.add(obj["kind"])
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                at = ".".join(str(p) for p in e.path)
                problem(shape, f"{label} is invalid for Kubernetes {version} at {at}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                problem(shape, f"{label}: {e.message}")
    validated = sorted(f"{o['kind']}" for o in objects if (o["apiVersion"], o["kind"]) not in CRD_KINDS)
    print(f"  valid for Kubernetes {' and '.join(KUBE_VERSIONS)} (strict): {', '.join(validated)}")
    if skipped:
        print(f"  no API schema for the CRD kinds {', '.join(sorted(skipped))}: skipped by kubernetes-validate")

    check_promises(shape, values, release, objects)

    for obj in objects:
        if obj["kind"] == "PrometheusRule":
            target = os.path.join(out_dir, shape.replace(".yaml", ".rules.yaml"))
            with open(target, "w") as f:
                yaml.dump(obj["spec"], f, Dumper=RulesDumper, sort_keys=False, width=120)
        if obj["kind"] == "ConfigMap" and obj["metadata"]["name"].endswith("-dashboard"):
            check_dashboard(shape, chart_dir, obj, out_dir)
    dashboards = [o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].endswith("-dashboard")]
    if bool(dashboards) != bool(values.get("grafanaDashboard", {}).get("enabled")):
        problem(shape, f"{len(dashboards)} dashboard ConfigMaps rendered, grafanaDashboard.enabled says otherwise")


# What Grafana puts in place of a dashboard's variables before it sends a query.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$namespace": "kv", "$job": ".+"}


def check_dashboard(shape, chart_dir, config_map, out_dir):
    """The dashboard's ConfigMap holds files/kafka-kv-dashboard.json as it is, and each of its
    queries becomes a recording rule, so that `promtool check rules` parses every one (the
    metrics they name are checked against the code by kv-core's docs test)."""
    with open(os.path.join(chart_dir, "files", "kafka-kv-dashboard.json")) as f:
        source = f.read()
    data = config_map.get("data", {})
    if list(data) != ["kafka-kv-dashboard.json"] or data["kafka-kv-dashboard.json"].strip() != source.strip():
        problem(shape, "the dashboard ConfigMap does not hold files/kafka-kv-dashboard.json as it is")
        return
    dashboard = json.loads(source)
    rules = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            if "$" in expr:
                problem(shape, f"panel {panel['title']!r} uses a variable the check does not know: {expr}")
            rules.append({"record": f"kafka_kv_dashboard:panel_{panel['id']}_{target['refId']}", "expr": expr})
    if not rules:
        problem(shape, "the dashboard has no query")
    target = os.path.join(out_dir, shape.replace(".yaml", ".dashboard.rules.yaml"))
    with open(target, "w") as f:
        yaml.dump({"groups": [{"name": "kafka-kv-dashboard", "rules": rules}]}, f, Dumper=RulesDumper, sort_keys=False, width=120)
    print(f"  dashboard: {len(rules)} queries written as recording rules for promtool")


def check_bad(chart, path):
    name = os.path.basename(path)
    with open(path) as f:
        text = f.read()
    # The first lines say why the file must be refused and at which value (a JSON pointer).
    reason = text.splitlines()[0].lstrip("# ")
    at = text.splitlines()[1].removeprefix("# at: ")
    try:
        chart.render(yaml.safe_load(text), name="kv", namespace=NAMESPACE)
    except helm.HelmError as e:
        # Helm's message: a heading, the chart's name, then one line per violation.
        message = " ".join(line.strip() for line in str(e).splitlines()[2:] if line.strip())
        if f"at '{at}'" not in message:
            problem(f"bad-values/{name}", f"refused, but not at {at}: {message}")
            return
        print(f"bad-values/{name}: {reason}: {message}")
        return
    problem(f"bad-values/{name}", f"rendered, but must be {reason}")


def main():
    chart_dir, shapes_dir, bad_dir, out_dir = sys.argv[1:5]
    # The project's yamllint rules, except that Helm's toYaml never indents a list under its key.
    with open(".yamllint.yml") as f:
        rules = yaml.safe_load(f)
    rules.pop("ignore", None)
    rules["rules"]["indentation"] = {"indent-sequences": "whatever"}
    lint_config = YamlLintConfig(content=yaml.safe_dump(rules))
    os.makedirs(out_dir, exist_ok=True)
    with helm.Chart.load(chart_dir) as chart:
        shapes = sorted(os.path.join(shapes_dir, f) for f in os.listdir(shapes_dir) if f.endswith(".yaml"))
        for path in shapes:
            check_shape(chart, chart_dir, path, out_dir, lint_config)
        # Names do not double up: `kv-writer` stays `kv-writer`; another release gets `-<role>`.
        other = chart.render({"role": "writer", "auth": {"disabled": True}}, name="shop", namespace=NAMESPACE)
        if "name: shop-writer\n" not in other["kafka-kv/templates/writer.yaml"]:
            problem("naming", "release `shop` does not name its writer `shop-writer`")
        for path in sorted(os.listdir(bad_dir)):
            check_bad(chart, os.path.join(bad_dir, path))
    if problems:
        print(f"{len(problems)} problem(s) in the chart:", file=sys.stderr)
        for p in problems:
            print(f"  {p}", file=sys.stderr)
        sys.exit(1)
    print(f"chart: {len(shapes)} shapes rendered and valid, {len(os.listdir(bad_dir))} bad values files refused")


if __name__ == "__main__":
    main()
