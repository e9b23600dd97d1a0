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

from compactor.cli import app

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
    from blocks.cli_common import parse_duration_ms
    assert parse_duration_ms(lease.split("=")[1]) <= 10 * 60_000
    assert job["backoffLimit"] >= 1
    assert "--memory-budget=1GiB" in args and any(v["name"] == "scratch" and "emptyDir" in v for v in pod["volumes"])
    limit = pod["containers"][0]["resources"]["limits"]["memory"]
    assert limit == "2Gi"  # measured peak RSS ~1.0 GiB at --memory-budget 1GiB (bench/bench_compact.py)
    sharded = next(d for n, d in manifests() if n == "compact-sharded-job.yaml")
    assert sharded["spec"]["completionMode"] == "Indexed"
    env = {e["name"]: e["value"] for e in sharded["spec"]["template"]["spec"]["containers"][0]["env"]}
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
    from compactor.compact_cli import metrics_text
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
    from compactor.cli import app
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
