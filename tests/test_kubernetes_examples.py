"""examples/kubernetes/: every manifest validated offline against the Kubernetes schemas
(kubernetes-validate ships them), plus the cross-references a schema cannot see."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from packaging.version import Version

from imagesync.config import load_document
from imagesync.serve import build_parser, load_serve_document

DIR = Path(__file__).resolve().parent.parent / "examples" / "kubernetes"
#: The oldest supported Kubernetes (backoffLimitPerIndex and the FailIndex action are
#: beta, on by default, from 1.29; or the oldest schemas shipped after it) and the newest.
_SHIPPED = sorted(kubernetes_validate.utils.all_versions(), key=Version)
VERSIONS = (next(v for v in _SHIPPED if Version(v) >= Version("1.29")), _SHIPPED[-1])
MEMORY_LIMIT = "256Mi"


def _docs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DIR.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((path.name, doc))
    return out


DOCS = _docs()


def _kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in DOCS if d["kind"] == kind]


def _one(kind: str, name: str) -> dict[str, Any]:
    [doc] = [d for d in _kind(kind) if d["metadata"]["name"] == name]
    return doc


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for _, d in DOCS:
        spec = {"Job": lambda d: d["spec"]["template"]["spec"],
                "Deployment": lambda d: d["spec"]["template"]["spec"],
                "CronJob": lambda d: d["spec"]["jobTemplate"]["spec"]["template"]["spec"],
                }.get(d["kind"])
        if spec:
            out.append((f"{d['kind']}/{d['metadata']['name']}", spec(d)))
    return out


def test_the_expected_manifests_are_there() -> None:
    kinds = sorted(f"{d['kind']}/{d['metadata']['name']}" for _, d in DOCS)
    assert kinds == [
        "ConfigMap/imagesync-config", "CronJob/imagesync-nightly", "Deployment/imagesync",
        "Job/imagesync-migration", "Secret/imagesync-credentials", "Secret/imagesync-webhook",
        "Service/imagesync",
    ]
    assert (DIR / "README.md").is_file()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize(("file", "doc"), DOCS,
                         ids=[f"{f}:{d['kind']}" for f, d in DOCS])
def test_manifest_is_valid(file: str, doc: dict[str, Any], version: str) -> None:
    # strict: unknown fields (a misspelt key is silently dropped by the API server) fail
    kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_catches_a_misspelt_field() -> None:
    job = yaml.safe_load((DIR / "job-sharded.yaml").read_text())
    job["spec"]["backoffLimitPerIndx"] = job["spec"].pop("backoffLimitPerIndex")
    with pytest.raises(kubernetes_validate.ValidationError, match="backoffLimitPerIndx"):
        kubernetes_validate.validate(job, VERSIONS[0], strict=True)


def _env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e for e in container.get("env", ())}


def test_indexed_job_runs_one_shard_per_index() -> None:
    job = _one("Job", "imagesync-migration")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 2
    assert spec["backoffLimitPerIndex"] >= 1
    assert "backoffLimit" not in spec  # the per-index limit is what bounds retries
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # needed by podFailurePolicy
    [c] = pod["containers"]
    assert _env(c)["IMAGESYNC_SHARDS"]["value"] == str(spec["completions"])
    assert "--config=/etc/imagesync/config.yaml" in c["args"]
    assert "--shard=$(JOB_COMPLETION_INDEX)/$(IMAGESYNC_SHARDS)" in c["args"]
    # a config error fails that index at once instead of using up its retries
    rules = spec["podFailurePolicy"]["rules"]
    assert {"action": "FailIndex", "onExitCodes": {
        "containerName": c["name"], "operator": "In", "values": [2]}} in rules


def test_cronjob_is_nightly_and_never_overlaps() -> None:
    cron = _one("CronJob", "imagesync-nightly")["spec"]
    minute, hour, *rest = cron["schedule"].split()
    assert rest == ["*", "*", "*"] and minute.isdigit() and hour.isdigit()
    assert cron["concurrencyPolicy"] == "Forbid"
    [c] = cron["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert "--config=/etc/imagesync/config.yaml" in c["args"]


def test_serve_deployment_and_service() -> None:
    dep = _one("Deployment", "imagesync")
    pod = dep["spec"]["template"]
    [c] = pod["spec"]["containers"]
    assert c["args"][0] == "serve"
    assert "--listen=0.0.0.0:8080" in c["args"]
    [port] = c["ports"]
    assert port["containerPort"] == 8080
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["httpGet"] == {"path": "/healthz", "port": port["name"]}
    assert pod["spec"]["terminationGracePeriodSeconds"] >= 60
    # serve's own grace ends before the kubelet's SIGKILL, and the flags parse
    args = build_parser().parse_args(c["args"][1:])
    assert 0 < args.grace < pod["spec"]["terminationGracePeriodSeconds"]
    assert args.interval == 3600
    token = _env(c)["WEBHOOK_TOKEN"]["valueFrom"]["secretKeyRef"]
    assert token["key"] in _one("Secret", token["name"])["stringData"]
    svc = _one("Service", "imagesync")["spec"]
    assert svc["selector"] == dep["spec"]["selector"]["matchLabels"]
    assert set(svc["selector"].items()) <= set(pod["metadata"]["labels"].items())
    assert svc["ports"][0]["port"] == 8080 and svc["ports"][0]["targetPort"] == port["name"]


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_pods_run_locked_down_with_limits(name: str, pod: dict[str, Any]) -> None:
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for c in pod["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert c["resources"]["limits"]["memory"] == MEMORY_LIMIT
        assert set(c["resources"]["requests"]) == {"cpu", "memory"}


@pytest.mark.parametrize(("name", "pod"), _pod_specs(), ids=[n for n, _ in _pod_specs()])
def test_config_and_credentials_are_wired(name: str, pod: dict[str, Any]) -> None:
    """The config file the container is given exists in the ConfigMap, loads, and every
    ${VAR} it needs comes from the container's environment (the Secret)."""
    volumes = {v["name"]: v for v in pod["volumes"]}
    for c in pod["containers"]:
        [config_arg] = [a for a in c["args"] if a.startswith("--config=")]
        config_path = Path(config_arg.split("=", 1)[1])
        [mount] = [m for m in c["volumeMounts"] if Path(m["mountPath"]) == config_path.parent]
        cm = _one("ConfigMap", volumes[mount["name"]]["configMap"]["name"])
        text = cm["data"][config_path.name]

        environ = {}
        for src in c.get("envFrom", ()):
            secret = _one("Secret", src["secretRef"]["name"])
            environ.update(secret["stringData"])
        for var, e in _env(c).items():
            ref = e.get("valueFrom", {}).get("secretKeyRef")
            environ[var] = (_one("Secret", ref["name"])["stringData"][ref["key"]]
                            if ref else e["value"])
        needed = set(re.findall(r"\$\{([A-Za-z_]\w*)\}", text))
        assert needed <= set(environ), f"{name}: not in the environment: {needed - set(environ)}"

        doc = yaml.safe_load(text)
        label = f"{cm['metadata']['name']}/{config_path.name}"
        if c["args"][0] == "serve":  # the rules plus serve's own block, as serve reads it
            config, serve = load_serve_document(doc, label, environ)
            assert serve.token == environ["WEBHOOK_TOKEN"]
        else:
            config = load_document(doc, label, environ=environ)
        assert config is not None
