"""Deployment artefacts, checked offline: Terraform parsed with python-hcl2 (security properties),
Kubernetes manifests validated strictly for two Kubernetes versions, every container command
parsed by the real `strata` CLI, the Dockerfile against the package, alert expressions against
a PromQL parser and the metrics Strata really exports."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import hcl2
import kubernetes_validate
import promql_parser
import pytest
import typer
import yaml
from typer.testing import CliRunner

from strata.cli import app

ROOT = Path(__file__).resolve().parent.parent
TF = ROOT / "infra" / "terraform"
K8S = ROOT / "infra" / "k8s"
K8S_VERSIONS = ["1.33.0", "1.36.0"]


def unquote(v):
    """python-hcl2 keeps string quotes: strip them everywhere."""
    if isinstance(v, str) and len(v) >= 2 and v[0] == v[-1] == '"':
        return v[1:-1]
    if isinstance(v, list):
        return [unquote(x) for x in v]
    if isinstance(v, dict):
        return {unquote(k): unquote(x) for k, x in v.items()}
    return v


def tf_resources() -> dict:
    out: dict = {"resource": {}, "data": {}, "variable": {}}
    for f in sorted(TF.glob("*.tf")):
        doc = unquote(hcl2.loads(f.read_text()))
        for kind in out:
            for block in doc.get(kind, []):
                for rtype, named in block.items():
                    if kind == "variable":
                        out[kind][rtype] = named
                        continue
                    for name, body in named.items():
                        out[kind][(rtype.strip('"'), name.strip('"'))] = body
    return out


def actions(doc_body) -> set[str]:
    acts = set()
    for st in doc_body.get("statement", []):
        acts.update(st.get("actions", []))
    for dyn in doc_body.get("dynamic", []):
        for body in dyn.values():
            for st in body.get("content", []):
                acts.update(st.get("actions", []))
    return acts


def unwrap(v):
    return v[0] if isinstance(v, list) and len(v) == 1 else v


def test_terraform_security_properties():
    tf = tf_resources()
    res = tf["resource"]
    pab = res[("aws_s3_bucket_public_access_block", "strata")]
    assert all(pab[k] is True for k in ("block_public_acls", "block_public_policy", "ignore_public_acls",
                                        "restrict_public_buckets"))
    sse = unwrap(res[("aws_s3_bucket_server_side_encryption_configuration", "strata")]["rule"])
    algo = unwrap(sse["apply_server_side_encryption_by_default"])["sse_algorithm"]
    assert "AES256" in algo and "aws:kms" in algo
    rule = unwrap(res[("aws_s3_bucket_lifecycle_configuration", "strata")]["rule"])
    assert rule["status"] == "Enabled" and "abort_incomplete_multipart_upload" in rule
    assert res[("aws_s3_bucket", "strata")]["object_lock_enabled"] == "${var.object_lock}"
    assert tf["variable"]["object_lock"]["default"] is False
    # Least privilege: the gateway's policy reads; compactor and receiver write too.
    data = tf["data"]
    ro, rw = actions(data[("aws_iam_policy_document", "read_only")]), actions(data[("aws_iam_policy_document", "read_write")])
    assert ro == {"s3:ListBucket", "s3:GetObject", "kms:Decrypt"}
    assert not any(re.search(r"Put|Delete|Abort|Write|\*", a) for a in ro)
    assert {"s3:PutObject", "s3:DeleteObject", "s3:GetObject", "s3:ListBucket"} <= rw
    assert not any("*" in a for a in rw)
    assert "read_only" in res[("aws_iam_role_policy", "gateway")]["policy"]
    assert "read_write" in res[("aws_iam_role_policy", "compactor")]["policy"]
    assert "read_write" in res[("aws_iam_role_policy", "receiver")]["policy"]
    trust = unwrap(data[("aws_iam_policy_document", "assume")]["statement"])
    assert trust["actions"] == ["sts:AssumeRoleWithWebIdentity"]
    assert any("system:serviceaccount:" in str(c["values"]) for c in trust["condition"])


def manifests() -> list[tuple[str, dict]]:
    out = []
    for f in sorted(K8S.glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        out += [(f.name, d) for d in yaml.safe_load_all(f.read_text()) if d]
    return out


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_kubernetes_manifests_validate_strictly(version):
    docs = manifests()
    assert {d["kind"] for _, d in docs} >= {"Namespace", "ServiceAccount", "ConfigMap", "CronJob", "Job", "Deployment",
                                            "Service", "StatefulSet"}
    for name, doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)  # raises ValidationError
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert all((K8S / r).exists() for r in kust["resources"])


def pod_specs():
    for name, d in manifests():
        spec = d.get("spec", {})
        if d["kind"] == "CronJob":
            yield name, d, spec["jobTemplate"]["spec"]["template"]["spec"]
        elif d["kind"] in ("Job", "Deployment", "StatefulSet"):
            yield name, d, spec["template"]["spec"]


def test_every_container_command_is_accepted_by_the_strata_cli():
    group = typer.main.get_command(app)
    runner = CliRunner()
    seen = 0
    for name, _, pod in pod_specs():
        for c in pod["containers"]:
            assert c["image"] == "strata" and "command" not in c  # the image's ENTRYPOINT is strata
            args = list(c["args"])
            cmd, path = group, []
            while hasattr(cmd, "list_commands"):  # a group (typer vendors its own click)
                path.append(args[0])
                cmd = cmd.get_command(None, args.pop(0))
                assert cmd is not None, (name, path)
            help_text = runner.invoke(app, [*path, "--help"], terminal_width=200).output
            for a in args:
                if a.startswith("--"):
                    assert a.split("=")[0] in help_text, (name, a)
            cmd.make_context(" ".join(path), list(args))  # click parses the real flags, or raises
            seen += 1
    assert seen >= 5


def test_cronjob_settings_match_the_measured_job():
    cron = next(d for _, d in manifests() if d["kind"] == "CronJob")
    job = cron["spec"]["jobTemplate"]["spec"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid" and cron["spec"]["startingDeadlineSeconds"] > 0
    pod = job["template"]["spec"]
    args = pod["containers"][0]["args"]
    lease = next(a for a in args if a.startswith("--lease-ttl="))
    # Leases are renewed while a job runs: a short TTL frees a killed pod's jobs quickly, and a
    # run that met a live lease exits 75, which the Job retries.
    from strata.common import parse_duration_ms
    assert parse_duration_ms(lease.split("=")[1]) <= 10 * 60_000
    assert job["backoffLimit"] >= 1
    assert "--memory-budget=1GiB" in args and any(v["name"] == "scratch" and "emptyDir" in v for v in pod["volumes"])
    limit = pod["containers"][0]["resources"]["limits"]["memory"]
    assert limit == "2Gi"  # measured peak RSS ~1.0 GiB at --memory-budget 1GiB (bench/bench_compact.py)
    sharded = next(d for n, d in manifests() if n == "compact-sharded-job.yaml")
    assert sharded["spec"]["completionMode"] == "Indexed"
    env = {e["name"]: e.get("value") for e in sharded["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert int(env["JOB_COMPLETIONS"]) == sharded["spec"]["completions"]
    gw = next(d for _, d in manifests() if d["kind"] == "Deployment")
    c = gw["spec"]["template"]["spec"]["containers"][0]
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready" and c["livenessProbe"]["httpGet"]["path"] == "/-/healthy"
    assert gw["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"


def test_dockerfile_matches_the_package():
    text = (ROOT / "Dockerfile").read_text()
    py = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert re.search(r'ENTRYPOINT \["strata"\]', text) and "strata" in py["project"]["scripts"]
    assert all(line.split()[1].startswith("python:") and "slim" in line for line in text.splitlines()
               if line.startswith("FROM"))
    user = re.findall(r"^USER (\S+)", text, re.M)
    assert user and not user[-1].startswith(("root", "0"))
    code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    assert "[test]" not in code and "pytest" not in code and "hypothesis" not in code
    for src in re.findall(r"^COPY (?!--from)(\S+)", text, re.M):
        assert (ROOT / src.rstrip("/")).exists(), src
    packages = set(py["tool"]["setuptools"]["packages"]["find"]["include"])
    copied = {s.rstrip("/") + "*" for s in re.findall(r"^COPY (\w+)/", text, re.M)}
    assert packages <= copied, packages - copied
    ignore = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", "tests", ".git", "data"} <= set(ignore)


def _receiver_exposition() -> str:
    """What a running receiver's /metrics really exports."""
    import tempfile

    from blocks.objstore import MemoryStore
    from ingest.receiver import Receiver, ReceiverConfig

    with tempfile.TemporaryDirectory() as d:
        rx = Receiver(MemoryStore(), ReceiverConfig(wal_dir=Path(d))).start(sealer=False)
        try:
            return rx.metrics.exposition().decode()
        finally:
            rx.close()


def test_receiver_statefulset_keeps_its_wal_on_a_volume():
    sts = next(d for _, d in manifests() if d["kind"] == "StatefulSet")
    c = sts["spec"]["template"]["spec"]["containers"][0]
    wal = next(a for a in c["args"] if a.startswith("--wal-dir=")).split("=", 1)[1]
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts["wal"] == wal and sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "wal"
    assert c["readinessProbe"]["httpGet"]["path"] == "/-/ready"
    assert sts["spec"]["template"]["spec"]["serviceAccountName"] == "strata-receiver"
    assert sts["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 60
    svc = next(d for _, d in manifests() if d["kind"] == "Service" and d["metadata"]["name"] == "strata-receiver")
    assert svc["spec"]["ports"][0]["port"] == 19291


def test_alert_rules_parse_and_use_exported_metrics():
    doc = yaml.safe_load((ROOT / "infra" / "monitoring" / "strata-alerts.yaml").read_text())
    rules = [r for g in doc["spec"]["groups"] for r in g["rules"]]
    names = {r["alert"] for r in rules}
    assert {"StrataCompactHalted", "StrataCompactNoSuccess", "StrataDownsamplingLag", "StrataGatewayErrors",
            "StrataReceiverWALGrowth"} <= names
    from strata.compact_cmd import metrics_text
    from compactor.nightly import Summary

    exported = metrics_text(Summary(newest_ms={"5m": 1}, retention={"tenants": {}}), 0, 0)
    exported += "strata_gateway_requests_total"  # gateway (tested there)
    exported += _receiver_exposition()
    for r in rules:
        promql_parser.parse(r["expr"])
        for metric in re.findall(r"\b(strata_[a-z_]+)", r["expr"]):
            assert metric in exported, (r["alert"], metric)


def test_retention_bootstrap_job_never_overwrites_a_newer_policy(tmp_path):
    """Run the Job's own args twice around an operator edit: the edit survives the re-apply."""
    from typer.testing import CliRunner

    from blocks.objstore import open_store
    from strata.cli import app
    from retention.store import edit_policy, load_policy

    job = next(d for _, d in manifests() if d["kind"] == "Job" and d["metadata"].get("name") == "strata-retention-bootstrap")
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--if-absent" in args
    cm = next(d for _, d in manifests() if d["kind"] == "ConfigMap" and d["metadata"].get("name") == "strata-config")
    policy_file = tmp_path / "retention-policy.json"
    policy_file.write_text(cm["data"]["retention-policy.json"])
    bucket = tmp_path / "bucket"
    local = [policy_file if a == "/etc/strata/retention-policy.json" else a for a in args]
    i = local.index("--config")
    local[i:i + 2] = ["--bucket", str(bucket)]
    run = [str(a) for a in local]
    r = CliRunner().invoke(app, run)
    assert r.exit_code == 0, r.output
    store = open_store(str(bucket))
    created, _ = load_policy(store)
    assert created.generation == 1 and created.rules
    edit_policy(store, lambda p: p.with_durations({"raw": "3d"}, None))  # `strata retention set raw=3d`
    r = CliRunner().invoke(app, run)  # the Job recreated by the next `kubectl apply -k`
    assert r.exit_code == 0 and "kept the stored retention policy (generation 2)" in r.output
    kept, _ = load_policy(store)
    assert kept.generation == 2 and kept.defaults["raw"] == "3d"


def _families(text: str) -> dict[str, str]:
    """family name -> type, and every sample name -> 'sample', of an exposition."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, str] = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name] = fam.type
        for s in fam.samples:
            out.setdefault(s.name, "sample")
    return out


def _exported(name: str, fams: dict[str, str]) -> bool:
    if name in fams:
        return True
    for suffix, kinds in (("_total", ("counter",)), ("_bucket", ("histogram",)), ("_count", ("histogram", "summary")),
                          ("_sum", ("histogram", "summary")), ("_created", ("counter", "histogram"))):
        if name.endswith(suffix) and fams.get(name[: -len(suffix)]) in kinds:
            return True
    return False


def test_grafana_dashboard_queries_use_metrics_a_real_strata_exports(tmp_path):
    """Every query of infra/monitoring/strata-dashboard.json parses as PromQL and names only
    metrics found in real /metrics output: a compactor pass's textfile, a gateway serving a
    remote-read and a gRPC Series request, and a receiver."""
    import json
    import urllib.request

    import cramjam
    import grpc

    from blocks.objstore import open_store
    from blocks.auth import TenantAuth
    from query_gateway.engine import Engine
    from query_gateway.grpc_api import serve_grpc
    from query_gateway.http_api import Gateway, serve_http
    from query_gateway.metrics import GatewayMetrics
    from blocks.pb import prom_types_pb2
    from query_gateway.pb import prom_remote_pb2, thanos_store_pb2, thanos_store_pb2_grpc
    from query_gateway.pb import thanos_store_types_pb2

    runner = CliRunner()
    bucket = tmp_path / "b"
    r = runner.invoke(app, ["generate", "--series", "49", "--hours", "26", "--bucket", str(bucket), "--tenant", "t",
                            "--start", "2026-01-01T00:00:00Z"])
    assert r.exit_code == 0, r.output
    textfile = tmp_path / "strata.prom"
    r = runner.invoke(app, ["compact", "--bucket", str(bucket), "--now", "2026-01-03T00:00:00Z",
                            "--metrics-textfile", str(textfile)])
    assert r.exit_code == 0, r.output
    exposition = textfile.read_text()

    store = open_store(str(bucket))
    engine = Engine(store, refresh_s=0)
    metrics = GatewayMetrics(engine)
    auth = TenantAuth("t")
    http, port = serve_http(Gateway(engine, auth, metrics), "127.0.0.1:0")
    grpc_server, grpc_port = serve_grpc(engine, auth, metrics, "127.0.0.1:0")
    try:
        q = prom_remote_pb2.Query(start_timestamp_ms=1_767_225_600_000, end_timestamp_ms=1_767_225_600_000 + 26 * 3_600_000,
                                  matchers=[prom_types_pb2.LabelMatcher(type=0, name="__name__", value="node_load1")],
                                  hints=prom_types_pb2.ReadHints(func="max_over_time", step_ms=3_600_000,
                                                                 range_ms=3_600_000))
        body = bytes(cramjam.snappy.compress_raw(prom_remote_pb2.ReadRequest(queries=[q]).SerializeToString()))
        with urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/read", data=body,
                                                           method="POST")) as resp:
            assert resp.status == 200
        req = thanos_store_pb2.SeriesRequest(
            min_time=1_767_225_600_000, max_time=1_767_312_000_000, max_resolution_window=3_600_000,
            matchers=[thanos_store_types_pb2.LabelMatcher(type=0, name="__name__", value="node_load1")],
            aggregates=[thanos_store_pb2.MAX])
        with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as ch:
            assert list(thanos_store_pb2_grpc.StoreStub(ch).Series(req))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics") as resp:
            exposition += resp.read().decode()
    finally:
        http.shutdown()
        http.server_close()
        grpc_server.stop(0)
    exposition += _receiver_exposition()
    fams = _families(exposition)

    dash = json.loads((ROOT / "infra" / "monitoring" / "strata-dashboard.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    wanted = set()
    for e in exprs:
        promql_parser.parse(e)
        wanted.update(re.findall(r"\b(strata_[a-z0-9_]+)", e))
    missing = sorted(m for m in wanted if not _exported(m, fams))
    assert missing == []
    # the panels the issue names: nightly outcome and duration, blocks per tier, gateway latency by
    # API and tier, receiver WAL and head
    for m in ("strata_compact_last_exit_code", "strata_compact_duration_seconds", "strata_bucket_blocks",
              "strata_gateway_tier_request_duration_seconds_bucket", "strata_receive_wal_bytes",
              "strata_receive_head_bytes"):
        assert m in wanted, m
    assert 'tier="1h"' in exposition or 'tier="5m"' in exposition  # the tier histogram saw real reads


def test_gateway_and_compactor_agree_on_the_deletion_delay():
    """The gateway stops reading a marked block after half the compactor's delay: both must say it."""
    from blocks.marks import DELETION_DELAY
    delays = {}
    for path, d in manifests():
        for c in (d.get("spec", {}).get("jobTemplate", {}).get("spec", {}) or d.get("spec", {})).get(
                "template", {}).get("spec", {}).get("containers", []):
            args = c.get("args", [])
            if args[:1] in (["compact"], ["gateway"]):
                delays[(path, args[0])] = next((a.split("=", 1)[1] for a in args if a.startswith("--deletion-delay=")), None)
    assert {k for _, k in delays} == {"compact", "gateway"}
    assert set(delays.values()) == {DELETION_DELAY}, delays


def test_deployment_wiring_for_non_eks_and_operator_scraping():
    """Pushgateway URL from the ConfigMap (not hard-coded), S3 keys from an optional Secret on every
    container, ServiceMonitors matching the Services, and an AWS provider with a region variable."""
    cm = next(d for _, d in manifests() if d["kind"] == "ConfigMap")
    assert cm["data"]["pushgateway-url"].startswith("http://")
    assert "secret_access_key" not in cm["data"]["strata.toml"]
    for name, d, spec in pod_specs():
        if name.endswith(".example.yaml"):
            continue
        for c in spec["containers"]:
            assert not any(a.startswith("--pushgateway=") for a in c.get("args", [])), name
            assert {"secretRef": {"name": "strata-s3-credentials", "optional": True}} in c.get("envFrom", []), name
            if c.get("args", [])[:1] == ["compact"]:
                env = {e["name"]: e for e in c.get("env", [])}
                assert env["STRATA_PUSHGATEWAY"]["valueFrom"]["configMapKeyRef"]["key"] == "pushgateway-url"
    secret = yaml.safe_load((K8S / "s3-credentials.example.yaml").read_text())
    assert secret["kind"] == "Secret" and set(secret["stringData"]) == {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}
    services = {d["metadata"]["name"]: d for _, d in manifests() if d["kind"] == "Service"}
    monitors = list(yaml.safe_load_all((ROOT / "infra" / "monitoring" / "strata-servicemonitors.yaml").read_text()))
    assert {m["metadata"]["name"] for m in monitors} == {"strata-gateway", "strata-receiver"}
    for m in monitors:
        svc = services[m["metadata"]["name"]]
        assert m["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
        assert {e["port"] for e in m["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    tf = "".join(p.read_text() for p in TF.glob("*.tf"))
    assert 'provider "aws"' in tf and "region = var.region" in tf and 'variable "region"' in tf
