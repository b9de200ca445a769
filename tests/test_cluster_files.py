"""cluster/ as written: the KubeRay manifests, the `ray up` config and the Dockerfile.

No Kubernetes, AWS or Docker here: the files are parsed and checked against what KubeRay, Ray's
cluster launcher and the build need — the repo files they name exist, the fields KubeRay requires
are there with the versions of constraints.txt, token auth and a NetworkPolicy guard every Ray
cluster, every volumeMount has its volume, and each object they reference (Secret, ConfigMap,
PVC) is defined in cluster/ or created by a documented command.
"""

from __future__ import annotations

import copy
import functools
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
OPERATIONS = ROOT / "docs" / "operations.md"
SECTION = "## Cluster definitions (`cluster/`)"

#: Repo-relative paths as the files write them (not in URLs or absolute container paths).
_REPO_PATH = re.compile(
    r"(?<![\w./~$-])((?:cluster|jobs|goracs_ray|docs|tests|benchmarks)/[\w./-]*\w"
    r"|constraints\.txt|pyproject\.toml|README\.md|Makefile)(?![\w/-])"
)


def _pin(name: str) -> str:
    text = (ROOT / "constraints.txt").read_text()
    match = re.search(rf"^{re.escape(name)}==(\S+)$", text, re.MULTILINE)
    assert match, f"no {name}== pin in constraints.txt"
    return match.group(1)


def _yaml_files() -> list[Path]:
    return sorted(p for p in CLUSTER.rglob("*") if p.suffix in (".yaml", ".yml"))


@functools.cache
def _parsed() -> tuple[tuple[Path, dict[str, Any]], ...]:
    docs = []
    for path in _yaml_files():
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                assert isinstance(doc, dict), f"{path.name}: a document that is not a mapping"
                docs.append((path, doc))
    return tuple(docs)


def _documents() -> list[tuple[Path, dict[str, Any]]]:
    """Every YAML document under cluster/ (multi-document files too), a fresh copy each call."""
    return copy.deepcopy(list(_parsed()))


def _k8s(kind: str | None = None) -> list[tuple[Path, dict[str, Any]]]:
    return [
        (p, d) for p, d in _documents() if "apiVersion" in d and (kind is None or d["kind"] == kind)
    ]


def _ray_clusters() -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(label, the RayCluster or RayJob object, its RayClusterSpec) for every Ray cluster."""
    out = []
    for path, doc in _k8s():
        if doc["kind"] == "RayCluster":
            out.append((f"{path.name}:{doc['metadata']['name']}", doc, doc["spec"]))
        elif doc["kind"] == "RayJob":
            spec = doc["spec"]["rayClusterSpec"]
            out.append((f"{path.name}:{doc['metadata']['name']}", doc, spec))
    return out


def _groups(spec: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(group name, group spec) for the head and every worker group."""
    return [("head", spec["headGroupSpec"])] + [
        (g.get("groupName", "?"), g) for g in spec.get("workerGroupSpecs") or []
    ]


def _pod_labels(obj: dict[str, Any], group: dict[str, Any]) -> dict[str, str]:
    """The labels KubeRay gives a pod of ``group``: its template's, and for a RayCluster (whose
    name is known in advance, unlike a RayJob's generated one) ray.io/cluster=<name>."""
    labels = dict((group["template"].get("metadata") or {}).get("labels") or {})
    if obj["kind"] == "RayCluster":
        labels["ray.io/cluster"] = obj["metadata"]["name"]
    return labels


def _pod_specs() -> list[tuple[str, dict[str, Any]]]:
    specs = [
        (f"{label}/{name}", group["template"]["spec"])
        for label, _, spec in _ray_clusters()
        for name, group in _groups(spec)
    ]
    specs += [(f"{p.name}:{d['metadata']['name']}", d["spec"]) for p, d in _k8s("Pod")]
    return specs


def _documented_text() -> str:
    """What a user reads to set a cluster up: the comments in cluster/ and docs/operations.md."""
    texts = [p.read_text() for p in _yaml_files()] + [OPERATIONS.read_text()]
    return "\n".join(texts).replace("\\\n", " ")


def _documented_commands(*prefix: str) -> list[list[str]]:
    """Every documented shell command that starts with ``prefix`` (e.g. kubectl create secret)."""
    commands = []
    for line in _documented_text().splitlines():
        line = line.strip().lstrip("#").strip()
        words = line.split()
        for i in range(len(words) - len(prefix) + 1):
            if tuple(words[i : i + len(prefix)]) == prefix:
                commands.append(words[i:])
    return commands


def _cpus(value: str | int | float) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def _group_cpus(group: dict[str, Any]) -> float:
    """Logical CPUs Ray gets on a pod of ``group`` (num-cpus, else the container's CPU limit)."""
    params = group.get("rayStartParams") or {}
    if "num-cpus" in params:
        return float(params["num-cpus"])
    container = group["template"]["spec"]["containers"][0]
    limits = (container.get("resources") or {}).get("limits") or {}
    return _cpus(limits.get("cpu", 0))


def _is_subset(small: dict[str, str], big: dict[str, str]) -> bool:
    return bool(small) and all(big.get(k) == v for k, v in small.items())


def test_every_yaml_under_cluster_parses():
    names = {p.name for p in _yaml_files()}
    assert {"raycluster.yaml", "rayjob.yaml", "ray-up-aws.yaml"} <= names
    kinds = {d["kind"] for _, d in _k8s()}
    assert {"RayCluster", "RayJob", "NetworkPolicy", "PersistentVolumeClaim"} <= kinds
    for path, doc in _documents():
        assert "apiVersion" in doc or "cluster_name" in doc, f"{path.name}: neither k8s nor ray up"
        if "apiVersion" in doc:
            assert doc.get("kind"), path.name
            assert doc.get("metadata", {}).get("name"), path.name


def test_every_repo_path_named_in_cluster_files_exists():
    named = {
        (path.name, m.group(1))
        for path in [*_yaml_files(), CLUSTER / "Dockerfile"]
        for m in _REPO_PATH.finditer(path.read_text())
    }
    missing = sorted(f"{file}: {name}" for file, name in named if not (ROOT / name).exists())
    assert not missing, "paths that do not exist in the repo:\n" + "\n".join(missing)
    assert any(name == "jobs/configs/cluster_llama.yaml" for _, name in named)


def test_kuberay_required_fields_and_versions():
    ray_pin = _pin("ray")
    clusters = _ray_clusters()
    assert {obj["kind"] for _, obj, _ in clusters} == {"RayCluster", "RayJob"}
    for label, obj, spec in clusters:
        assert obj["apiVersion"] == "ray.io/v1", label
        assert spec.get("rayVersion") == ray_pin, f"{label}: rayVersion != ray=={ray_pin}"
        head = spec.get("headGroupSpec") or {}
        containers = (head.get("template") or {}).get("spec", {}).get("containers")
        assert containers, f"{label}: headGroupSpec.template.spec.containers"
        workers = spec.get("workerGroupSpecs")
        assert isinstance(workers, list), f"{label}: workerGroupSpecs"
        assert workers, f"{label}: workerGroupSpecs"
        names = [w.get("groupName") for w in workers]
        assert all(names), f"{label}: groupName {names}"
        assert len(set(names)) == len(names), f"{label}: groupName {names}"
        for name, group in _groups(spec):
            assert all(isinstance(v, str) for v in (group.get("rayStartParams") or {}).values()), (
                f"{label}/{name}: rayStartParams values must be strings"
            )
            for container in group["template"]["spec"]["containers"]:
                assert container.get("name"), f"{label}/{name}"
                assert container.get("image"), f"{label}/{name}"
        for worker in workers:
            lo, hi = worker.get("minReplicas"), worker.get("maxReplicas")
            where = f"{label}/{worker['groupName']}"
            assert isinstance(lo, int), f"{where}: minReplicas"
            assert isinstance(hi, int), f"{where}: maxReplicas"
            assert 0 <= lo <= hi, f"{where}: {lo}..{hi}"
            assert hi >= 1, f"{where}: {lo}..{hi}"
            assert lo <= worker.get("replicas", lo) <= hi, where
        if obj["kind"] == "RayJob":
            entrypoint = obj["spec"].get("entrypoint")
            assert isinstance(entrypoint, str), f"{label}: entrypoint"
            assert entrypoint.strip(), f"{label}: entrypoint"
            deadline = obj["spec"].get("activeDeadlineSeconds")
            assert isinstance(deadline, int), f"{label}: activeDeadlineSeconds"
            assert deadline > 0, f"{label}: activeDeadlineSeconds"


def test_token_auth_with_a_documented_secret():
    secrets = {
        words[4]: " ".join(words)
        for words in _documented_commands("kubectl", "create", "secret", "generic")
    }
    for label, _, spec in _ray_clusters():
        auth = spec.get("authOptions") or {}
        assert auth.get("mode") == "token", f"{label}: authOptions.mode must be token"
        name = auth.get("secretName")
        assert isinstance(name, str), f"{label}: authOptions.secretName"
        assert name, f"{label}: authOptions.secretName"
        assert name in secrets, f"{label}: no documented `kubectl create secret generic {name}`"
        assert "--from-literal=auth_token=" in secrets[name], f"{name}: data key must be auth_token"


def test_a_network_policy_admits_only_the_clusters_own_pods_and_its_submitter():
    policies = [d for _, d in _k8s("NetworkPolicy")]
    for label, obj, spec in _ray_clusters():
        pods = [_pod_labels(obj, group) for _, group in _groups(spec)]
        selecting = [
            p
            for p in policies
            if all(_is_subset(p["spec"]["podSelector"].get("matchLabels") or {}, lb) for lb in pods)
        ]
        assert selecting, f"{label}: no NetworkPolicy selects all of its pods"
        for policy in selecting:
            name = policy["metadata"]["name"]
            assert "Ingress" in policy["spec"].get("policyTypes", []), name
            rules = policy["spec"].get("ingress") or []
            own, others = [], []
            for rule in rules:
                peers = rule.get("from") or []
                assert peers, f"{name}: an ingress rule without `from` admits everyone"
                for peer in peers:
                    assert "ipBlock" not in peer, f"{name}: ipBlock peer"
                    assert (peer.get("podSelector") or {}).get("matchLabels"), (
                        f"{name}: every peer must select pods by label"
                    )
                mine = all(
                    all(_is_subset(peer["podSelector"]["matchLabels"], lb) for lb in pods)
                    and "namespaceSelector" not in peer
                    for peer in peers
                )
                (own if mine else others).append(rule)
                if not mine:
                    assert rule.get("ports"), f"{name}: outside peers get named ports only"
            assert own, f"{name}: the cluster's own pods are not admitted"
            submitters = [peer["podSelector"]["matchLabels"] for r in others for peer in r["from"]]
            if obj["kind"] == "RayJob":
                expected = {
                    "ray.io/originated-from-crd": "RayJob",
                    "ray.io/originated-from-cr-name": obj["metadata"]["name"],
                }
                assert expected in submitters, f"{name}: the RayJob's submitter pod is not admitted"
            else:
                assert submitters, f"{name}: no labelled submitter"


def test_every_volume_mount_has_its_volume_and_every_claim_is_defined():
    claims = {d["metadata"]["name"] for _, d in _k8s("PersistentVolumeClaim")}
    for label, pod in _pod_specs():
        volumes = {v["name"]: v for v in pod.get("volumes") or []}
        for container in pod["containers"]:
            for mount in container.get("volumeMounts") or []:
                assert mount["name"] in volumes, f"{label}: mount {mount['name']} has no volume"
        for volume in volumes.values():
            if "persistentVolumeClaim" in volume:
                claim = volume["persistentVolumeClaim"]["claimName"]
                assert claim in claims, f"{label}: PVC {claim} is not defined in cluster/"


def test_ray_pods_mount_shm_in_memory():
    for label, _, spec in _ray_clusters():
        for name, group in _groups(spec):
            pod = group["template"]["spec"]
            volumes = {v["name"]: v for v in pod.get("volumes") or []}
            container = pod["containers"][0]
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts") or []}
            assert "/dev/shm" in mounts, f"{label}/{name}: no /dev/shm mount"
            empty = volumes[mounts["/dev/shm"]].get("emptyDir") or {}
            assert empty.get("medium") == "Memory", f"{label}/{name}: /dev/shm not in memory"


def _mounts(container: dict[str, Any]) -> list[str]:
    return [m["mountPath"].rstrip("/") + "/" for m in container.get("volumeMounts") or []]


def test_rayjob_config_comes_from_a_documented_configmap_and_its_paths_are_mounted():
    configmaps = {}
    for words in _documented_commands("kubectl", "create", "configmap"):
        for word in words[4:]:
            if word.startswith("--from-file=") and word.count("=") == 2:
                _, key, source = word.split("=")
                configmaps[words[3]] = (key, source)
    for label, obj, spec in _ray_clusters():
        if obj["kind"] != "RayJob":
            continue
        config_path = shlex.split(obj["spec"]["entrypoint"])[-1]
        head_pod = spec["headGroupSpec"]["template"]["spec"]
        volumes = {v["name"]: v for v in head_pod.get("volumes") or []}
        mount = next(
            m
            for m in head_pod["containers"][0].get("volumeMounts") or []
            if config_path.startswith(m["mountPath"].rstrip("/") + "/")
        )
        name = volumes[mount["name"]]["configMap"]["name"]
        assert name in configmaps, f"{label}: no documented `kubectl create configmap {name}`"
        key, source = configmaps[name]
        assert config_path == f"{mount['mountPath'].rstrip('/')}/{key}", f"{label}: key {key}"
        assert (ROOT / source).is_file(), source
        cfg = yaml.safe_load((ROOT / source).read_text())
        wanted = [cfg.get("run_dir"), (cfg.get("model") or {}).get("path")]
        for group_name, group in _groups(spec):
            for container in group["template"]["spec"]["containers"]:
                for path in (str(p) for p in wanted if p and str(p).startswith("/")):
                    assert any(path.startswith(m) for m in _mounts(container)), (
                        f"{label}/{group_name}: {path} (from {source}) is on no mounted volume"
                    )


def test_distributed_selection_actors_fit_on_some_group():
    from goracs_ray.select.distributed import WorkerSettings

    need = WorkerSettings().actor_cpus
    for label, _, spec in _ray_clusters():
        homes = [
            name
            for name, group in _groups(spec)
            if _group_cpus(group) >= need and (name == "head" or group["maxReplicas"] >= 1)
        ]
        assert homes, f"{label}: no group has {need} CPU for the selector/evaluator/shard actors"


def _image_tag() -> str:
    match = re.search(r"docker build -f cluster/Dockerfile -t (\S+) \.", _dockerfile())
    assert match, "the Dockerfile's header names no `docker build ... -t IMAGE .`"
    return match.group(1)


def _dockerfile() -> str:
    return (CLUSTER / "Dockerfile").read_text()


def test_every_ray_node_runs_the_project_image():
    image = _image_tag()
    for label, pod in _pod_specs():
        for container in pod["containers"]:
            assert container["image"] == image, f"{label}: {container['image']} != {image}"
    (rayup,) = [d for _, d in _documents() if "cluster_name" in d]
    assert rayup["docker"]["image"] == image


def test_ray_up_config_is_valid_and_runs_in_the_image():
    from ray.autoscaler._private.util import prepare_config, validate_config

    (config,) = [d for _, d in _documents() if "cluster_name" in d]
    validate_config(prepare_config(config))
    docker = config.get("docker") or {}
    assert docker.get("image"), "ray up without the image"
    assert docker.get("container_name"), "ray up's docker section needs a container_name"
    commands = (config.get("setup_commands") or []) + (config.get("initialization_commands") or [])
    assert not [c for c in commands if "pip install" in c], "the image has everything installed"
    run_options = " ".join(docker.get("run_options") or [])
    assert "RAY_AUTH_MODE=token" in run_options


def test_dockerfile_installs_the_pinned_wheel_with_cuda_torch():
    text = _dockerfile()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", text, re.MULTILINE))
    assert args.get("RAY_VERSION") == _pin("ray")
    assert re.search(r"^FROM rayproject/ray:\$\{RAY_VERSION\}-py311-", text, re.MULTILINE)
    assert re.fullmatch(r"cu12\d", args.get("CUDA", "")), "a CUDA 12.x torch index"
    assert "https://download.pytorch.org/whl/${CUDA}" in text
    # torch at the constraints.txt pin: written out, or read from constraints.txt in the build
    assert f"torch=={_pin('torch')}" in text or "grep -E '^torch==' constraints.txt" in text
    assert "PIP_CONSTRAINT=" in text, "pip install without constraints.txt"
    assert "constraints.txt" in text, "pip install without constraints.txt"
    assert not re.search(r"pip install[^\n]*(\s-e\s|--editable)", text), "non-editable install"
    ignored = [
        line.strip().rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert {".venv", ".git", "runs"} <= set(ignored)
    for sources in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.MULTILINE):
        for source in sources.split():
            assert (ROOT / source).exists(), f"COPY {source}: not in the repo"
            assert source not in ignored, f"COPY {source}: excluded by .dockerignore"


def test_operations_doc_names_every_cluster_file():
    text = OPERATIONS.read_text()
    assert SECTION in text
    section = text.split(SECTION, 1)[1].split("\n## ", 1)[0]
    for path in sorted(CLUSTER.iterdir()):
        assert f"`{path.name}`" in section or f"cluster/{path.name}" in section, path.name


@pytest.mark.parametrize("needle", ["RAY_AUTH_TOKEN", "port-forward", "auth_token=$(openssl"])
def test_operations_doc_tells_how_to_reach_the_secured_cluster(needle):
    section = OPERATIONS.read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    assert needle in section
