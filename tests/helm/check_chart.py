"""check_chart.py — helm/tandem checked without a cluster, with Helm's own
engine (PyPI helm-python-sdk: Helm v4's Go code as a shared library).

1. `helm lint --strict` on the defaults and on every value set in values/.
2. Render the defaults and every value set; each manifest must be valid YAML
   without duplicate keys, pass yamllint, and validate (strictly: unknown
   fields are errors) against the Kubernetes schemas of the oldest and the
   newest version we support (PyPI kubernetes-validate). The ServiceMonitor
   (a CRD's kind) is checked for shape only.
3. What an operator relies on: probes are gRPC probes on the health port
   the process serves (--health-listen), liveness asks for "" (never for
   readiness, which follows etcd); every process's etcd endpoints and
   cluster name equal the coordinator's; metrics ports match
   --metrics-listen; the value sets do what they say (GPU limits and mpirun
   -np 2, external endpoints verbatim and no bundled etcd, TLS and token
   files wired, an Indexed Job with --shard $(JOB_COMPLETION_INDEX)/N
   against the coordinator's Service).
4. Every file in bad/ fails at render through values.schema.json with an
   error naming the field its first line expects.
5. yamllint on the chart's plain YAML (Chart.yaml, values.yaml) and on the
   value sets.

Usage: python check_chart.py [--dump DIR]   (from the venv tests/helm/run.sh makes)
With --dump, rendered manifests are written to DIR/<value set>/ for reading
and for test_chart_cluster.py.
"""
import json
import os
import re
import sys

import helm_python as helm
import kubernetes_validate
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

HERE = os.path.dirname(os.path.abspath(__file__))
CHART = os.path.join(HERE, "..", "..", "helm", "tandem")
KUBE_VERSIONS = ["1.29.0", "1.37.0"]  # gRPC probes GA since 1.27; backoffLimitPerIndex since 1.29
# Rendered manifests: what a reader or kubectl cares about (syntax, keys,
# indentation); blank lines and trailing blanks left by templates that
# rendered nothing are not worth template contortions.
YAMLLINT_RENDERED = YamlLintConfig("""
extends: default
rules:
  line-length: {max: 250}
  document-start: disable
  truthy: {check-keys: false}
  comments: disable
  comments-indentation: disable
  indentation: {indent-sequences: whatever}
  empty-lines: disable
  trailing-spaces: disable
""")
YAMLLINT = YamlLintConfig("""
extends: default
rules:
  line-length: {max: 200}
  document-start: disable
  truthy: {check-keys: false}
  comments: {min-spaces-from-content: 1}
  indentation: {indent-sequences: whatever}
  empty-lines: {max-end: 1}
""")

failures = []


def fail(msg):
    failures.append(msg)
    print("FAIL:", msg)


class UniqueKeyLoader(yaml.SafeLoader):
    """A duplicate mapping key is an error (PyYAML keeps the last silently)."""


def _mapping(loader, node, deep=False):
    seen = set()
    for k, _ in node.value:
        key = loader.construct_object(k, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(None, None, "duplicate key %r" % (key,), k.start_mark)
        seen.add(key)
    return loader.construct_mapping(node, deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def load_values(path):
    with open(path) as f:
        return yaml.safe_load(f) or {}


def render(values, name="rel"):
    with helm.Chart.load(CHART) as chart:
        return chart.render(values, name=name, namespace="ns")


def objects(manifests, label):
    """Parsed objects of a render, each linted and checked for duplicate keys."""
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt") or not text.strip():
            continue
        for p in linter.run(text, YAMLLINT_RENDERED):
            if p.level == "error":
                fail("%s: %s:%d: yamllint: %s" % (label, path, p.line, p.message))
        try:
            docs = [d for d in yaml.load_all(text, Loader=UniqueKeyLoader) if d]
        except yaml.YAMLError as e:
            fail("%s: %s: %s" % (label, path, e))
            continue
        for d in docs:
            out.append((path, d))
    return out


def scraped(ep, pod_labels):
    """Whether Prometheus keeps a pod with these labels as a target: the
    endpoint's drop rules applied as Prometheus does (source label values
    joined by ';', the regex anchored at both ends)."""
    for r in ep.get("relabelings", []):
        if r.get("action") != "drop":
            continue
        names = [n[len("__meta_kubernetes_pod_label_"):] for n in r["sourceLabels"]]
        value = ";".join(pod_labels.get(n, "") for n in names)
        if re.fullmatch(r["regex"], value):
            return False
    return True


def check_follower_drop(ep, label):
    """A tpPods group's ranks 1.. serve no /metrics: not scraped; rank 0, any
    other verifier's pod 0 or 1, and a Deployment's pod are."""
    group, index = "tandem_io_group", "apps_kubernetes_io_pod_index"
    for pod, want in [({group: "g", index: "1"}, False), ({group: "g", index: "12"}, False),
                      ({group: "g", index: "0"}, True), ({index: "1"}, True), ({index: "0"}, True), ({}, True)]:
        if scraped(ep, pod) != want:
            fail("%s: ServiceMonitor %s a pod labelled %s" % (label, "drops" if want else "scrapes", pod))


def kube_validate(objs, label):
    for path, o in objs:
        if o.get("apiVersion", "").startswith("monitoring.coreos.com/"):
            spec = o.get("spec", {})
            if not spec.get("selector") or not spec.get("endpoints"):
                fail("%s: ServiceMonitor without selector or endpoints" % label)
            for ep in spec.get("endpoints", []):
                check_follower_drop(ep, label)
            continue
        for v in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(o, v, strict=True)
            except kubernetes_validate.ValidationError as e:
                fail("%s: %s %s (Kubernetes %s): %s at %s" % (label, o["kind"], o["metadata"]["name"], v, e.message,
                                                             "/".join(str(p) for p in e.path)))


def pod_spec(o):
    if o["kind"] in ("Deployment", "StatefulSet", "Job"):
        return o["spec"]["template"]["spec"]
    return None


def flag(args, name):
    """The value after a flag in an argument list (None when absent)."""
    return args[args.index(name) + 1] if name in args else None


def tandem_containers(objs):
    """(object, container, argv) of every tandem-coordinator / tandem-worker container."""
    out = []
    for _, o in objs:
        spec = pod_spec(o)
        if not spec:
            continue
        for c in spec["containers"]:
            argv = c.get("command", []) + c.get("args", [])
            if "tandem-coordinator" in argv or "tandem-worker" in argv:
                out.append((o, c, argv))
    return out


def check_operator_facts(objs, values, label):
    merged = values
    tc = tandem_containers(objs)
    roles = {}
    for o, c, argv in tc:
        role = "coordinator" if "tandem-coordinator" in argv else flag(argv, "--role")
        roles.setdefault(role, []).append((o, c, argv))
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        hl = flag(argv, "--health-listen")
        if not hl or int(hl.rsplit(":", 1)[1]) != ports.get("health"):
            fail("%s: %s: --health-listen %s is not the container's health port %s" % (label, c["name"], hl,
                                                                                      ports.get("health")))
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            p = c.get(kind)
            if not p or "grpc" not in p:
                fail("%s: %s: %s is not a gRPC probe" % (label, c["name"], kind))
                continue
            if p["grpc"]["port"] != ports.get("health"):
                fail("%s: %s: %s on port %s, not the plaintext health port %s" % (label, c["name"], kind,
                                                                                 p["grpc"]["port"], ports.get("health")))
        if c.get("livenessProbe", {}).get("grpc", {}).get("service", "") != "":
            fail("%s: %s: liveness must ask for service \"\" (it must not follow etcd)" % (label, c["name"]))
        want_ready = "tandem.v1.Inference" if role == "coordinator" else "tandem.v1.Worker"
        if flag(argv, "--tp-rank") is not None:
            want_ready = ""  # a group's pods share a template; only rank 0 serves the Worker (check_tp_pods)
        if c.get("readinessProbe", {}).get("grpc", {}).get("service", "") != want_ready:
            fail("%s: %s: readiness should ask for %s" % (label, c["name"], want_ready))
        ml = flag(argv, "--metrics-listen")
        if merged["metrics"]["enabled"] != bool(ml):
            fail("%s: %s: --metrics-listen %s with metrics.enabled %s" % (label, c["name"], ml,
                                                                          merged["metrics"]["enabled"]))
        if ml and int(ml.rsplit(":", 1)[1]) != ports.get("metrics"):
            fail("%s: %s: --metrics-listen %s is not the metrics port" % (label, c["name"], ml))
        sc = c.get("securityContext", {})
        if sc.get("allowPrivilegeEscalation") is not False or not o["spec"]["template"]["spec"].get(
                "securityContext", {}).get("runAsNonRoot"):
            fail("%s: %s: should run as non-root without privilege escalation" % (label, c["name"]))
    # only GPU verifiers run the CUDA image; every other tandem pod the plain one
    for role, items in roles.items():
        for o, c, argv in items:
            if role != "verifier" and c.get("image") != plain_image(merged):
                fail("%s: %s: image %s, expected %s" % (label, c["name"], c.get("image"), plain_image(merged)))
    if "coordinator" not in roles or "verifier" not in roles:
        fail("%s: no coordinator or no verifier rendered" % label)
        return
    _, _, cargv = roles["coordinator"][0]
    for role, items in roles.items():
        for o, c, argv in items:
            for f in ("--etcd", "--cluster"):
                if flag(argv, f) != flag(cargv, f):
                    fail("%s: %s %s: %s %s differs from the coordinator's %s" % (label, role, o["metadata"]["name"], f,
                                                                               flag(argv, f), flag(cargv, f)))
    if flag(cargv, "--cluster") != merged["cluster"]:
        fail("%s: coordinator --cluster %s, values say %s" % (label, flag(cargv, "--cluster"), merged["cluster"]))
    kinds = {(o["kind"], o["metadata"]["name"]) for _, o in objs}
    etcd_sts = [n for k, n in kinds if k == "StatefulSet" and n.endswith("-etcd")]
    if merged["etcd"]["bundled"]:
        if len(etcd_sts) != 1 or not flag(cargv, "--etcd").startswith("http://"):
            fail("%s: bundled etcd missing or not used" % label)
    else:
        if etcd_sts:
            fail("%s: external etcd but an etcd StatefulSet is rendered" % label)
        if flag(cargv, "--etcd") != ",".join(merged["etcd"]["endpoints"]):
            fail("%s: --etcd %s is not etcd.endpoints" % (label, flag(cargv, "--etcd")))
    # per model: a verifier StatefulSet, resources and TP as asked
    for m in merged["models"]:
        v = m["verifier"]
        sts = [o for o, c, argv in roles["verifier"] if o["metadata"]["labels"].get("tandem.io/model") == m["name"]]
        if v.get("tpPods"):
            check_tp_pods(label, m, sts)
            continue
        if len(sts) != 1 or sts[0]["kind"] != "StatefulSet" or sts[0]["spec"]["replicas"] != v["replicas"]:
            fail("%s: model %s: expected one verifier StatefulSet with %d replicas" % (label, m["name"], v["replicas"]))
            continue
        c = sts[0]["spec"]["template"]["spec"]["containers"][0]
        argv = c.get("command", []) + c.get("args", [])
        if v["tp"] > 1 and (argv[0] != "mpirun" or flag(argv, "-np") != str(v["tp"])):
            fail("%s: model %s: tp %d but the entrypoint is %s" % (label, m["name"], v["tp"], argv[:3]))
        if v["tp"] == 1 and argv[0] != "tandem-worker":
            fail("%s: model %s: tp 1 should run tandem-worker directly" % (label, m["name"]))
        if flag(argv, "--tp-rank") is not None:
            fail("%s: model %s: --tp-rank without tpPods" % (label, m["name"]))
        # the ranks must know they are a group (else each serves a whole
        # model on the same port), over the transport the values name
        want_tp = (str(v["tp"]), v.get("tpComm", "mpi")) if v["tp"] > 1 else (None, None)
        if (flag(argv, "--tp"), flag(argv, "--tp-comm")) != want_tp:
            fail("%s: model %s: tp %d: the worker is given --tp %s --tp-comm %s" % (label, m["name"], v["tp"],
                                                                                   flag(argv, "--tp"),
                                                                                   flag(argv, "--tp-comm")))
        gpus = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
        if (gpus or 0) != v["gpus"]:
            fail("%s: model %s: nvidia.com/gpu limit %s, values say %d" % (label, m["name"], gpus, v["gpus"]))
        if (flag(argv, "--device") == "cuda") != (v["gpus"] > 0):
            fail("%s: model %s: --device %s with %d GPUs" % (label, m["name"], flag(argv, "--device"), v["gpus"]))
        want_image = cuda_image(merged) if v["gpus"] > 0 else plain_image(merged)
        if c.get("image") != want_image:
            fail("%s: model %s: verifier image %s with %d GPUs, expected %s" % (label, m["name"], c.get("image"),
                                                                                v["gpus"], want_image))
        rc = sts[0]["spec"]["template"]["spec"].get("runtimeClassName", "")
        if rc != v.get("runtimeClassName", ""):
            fail("%s: model %s: runtimeClassName %r, values say %r" % (label, m["name"], rc,
                                                                        v.get("runtimeClassName", "")))
        if not flag(argv, "--model", ).endswith("/" + m["file"]):
            fail("%s: model %s: --model %s" % (label, m["name"], flag(argv, "--model")))
        init = sts[0]["spec"]["template"]["spec"].get("initContainers", [])
        if (m["source"] == "download") != bool(init):
            fail("%s: model %s: source %s but init containers %s" % (label, m["name"], m["source"], init))
        if init and not any(e["name"] == "MODEL_SHA256" and e["value"] == m["download"]["sha256"]
                            for e in init[0]["env"]):
            fail("%s: model %s: the download is not checked against its sha256" % (label, m["name"]))
        drafters = [o for o, c, argv in roles.get("drafter", []) if o["metadata"]["labels"].get("tandem.io/model") ==
                    m["name"]]
        if len(drafters) != (1 if m["drafter"]["enabled"] else 0):
            fail("%s: model %s: drafter.enabled %s, %d drafter Deployments" % (label, m["name"], m["drafter"]["enabled"],
                                                                               len(drafters)))
    # security wiring
    if merged["tls"]["coordinator"]["enabled"] and not flag(cargv, "--tls-cert"):
        fail("%s: tls.coordinator.enabled but no --tls-cert" % label)
    if merged["auth"]["enabled"] and not flag(cargv, "--auth-tokens"):
        fail("%s: auth.enabled but no --auth-tokens" % label)
    if merged["tls"]["workers"]["enabled"]:
        if not flag(cargv, "--worker-tls-ca"):
            fail("%s: tls.workers.enabled but the coordinator does not verify workers" % label)
        for o, c, argv in roles["verifier"] + roles.get("drafter", []):
            if not flag(argv, "--tls-cert"):
                fail("%s: %s: tls.workers.enabled but no --tls-cert" % (label, o["metadata"]["name"]))
    if merged["etcd"]["auth"]["user"]:
        for o, c, argv in tc:
            if not any(e["name"] == "TANDEM_ETCD_PASSWORD" for e in c.get("env", [])):
                fail("%s: %s: etcd user without TANDEM_ETCD_PASSWORD" % (label, c["name"]))
    # the scoring Job
    jobs = [o for _, o in objs if o["kind"] == "Job"]
    sj = merged["scoreJob"]
    if bool(jobs) != sj["enabled"]:
        fail("%s: scoreJob.enabled %s but %d Jobs" % (label, sj["enabled"], len(jobs)))
    for j in jobs:
        s = j["spec"]
        argv = s["template"]["spec"]["containers"][0]["command"] + s["template"]["spec"]["containers"][0]["args"]
        svc = [o for _, o in objs if o["kind"] == "Service" and o["metadata"]["name"].endswith("-coordinator")][0]
        want_server = "%s.ns.svc.%s:%d" % (svc["metadata"]["name"], merged["clusterDomain"],
                                           svc["spec"]["ports"][0]["port"])
        if s.get("completionMode") != "Indexed" or s.get("completions") != sj["shards"]:
            fail("%s: the Job is not Indexed with %d completions" % (label, sj["shards"]))
        if argv[:2] != ["tandem", "score"] or flag(argv, "--shard") != "$(JOB_COMPLETION_INDEX)/%d" % sj["shards"]:
            fail("%s: the Job does not run tandem score --shard $(JOB_COMPLETION_INDEX)/%d: %s" % (label, sj["shards"],
                                                                                                   argv))
        if flag(argv, "--server") != want_server:
            fail("%s: the Job's --server %s is not the coordinator Service %s" % (label, flag(argv, "--server"),
                                                                                 want_server))
        if "$(JOB_COMPLETION_INDEX)" not in flag(argv, "--out"):
            fail("%s: the shards would share one output file" % label)
        if merged["auth"]["enabled"] and not flag(argv, "--token-file"):
            fail("%s: auth.enabled but the Job sends no token" % label)
    # the OpenAI-compatible gateway: smg pointed at the coordinator Service
    gws = [o for _, o in objs if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("-gateway")]
    if bool(gws) != merged["gateway"]["enabled"]:
        fail("%s: gateway.enabled %s but %d gateway Deployments" % (label, merged["gateway"]["enabled"], len(gws)))
    for g in gws:
        c = g["spec"]["template"]["spec"]["containers"][0]
        argv = c["command"] + c["args"]
        svc = [o for _, o in objs if o["kind"] == "Service" and o["metadata"]["name"].endswith("-coordinator")][0]
        want = "grpc://%s.ns.svc.%s:%d" % (svc["metadata"]["name"], merged["clusterDomain"], svc["spec"]["ports"][0]["port"])
        if argv[:2] != ["/opt/smg/bin/smg", "launch"] or flag(argv, "--backend") != "vllm" or \
                flag(argv, "--worker-urls") != want:
            fail("%s: the gateway does not run smg launch --backend vllm --worker-urls %s: %s" % (label, want, argv))
        ports = {p["name"]: p["containerPort"] for p in c.get("ports", [])}
        if int(flag(argv, "--port")) != ports.get("http") or c["readinessProbe"]["httpGet"]["port"] != "http":
            fail("%s: the gateway's --port is not its http port, or readiness does not ask it" % label)
        gsvc = [o for _, o in objs if o["kind"] == "Service" and o["metadata"]["name"].endswith("-gateway")]
        if len(gsvc) != 1 or gsvc[0]["spec"]["ports"][0]["targetPort"] != "http":
            fail("%s: no gateway Service on its http port" % label)


# maps passed to Kubernetes as they are: documented as one value
OPAQUE = ("resources", "nodeSelector", "affinity", "annotations", "podAnnotations", "labels", "podSecurityContext",
          "securityContext")


def value_paths(o, p=""):
    """Documented value paths: models[].verifier.tp, coordinator.resources, ..."""
    if isinstance(o, dict) and o and not p.endswith(OPAQUE):
        for k, x in o.items():
            yield from value_paths(x, "%s.%s" % (p, k) if p else k)
    elif isinstance(o, list) and o and isinstance(o[0], dict):
        yield from value_paths(o[0], p + "[]")
    else:
        yield p


def app_version():
    with open(os.path.join(CHART, "Chart.yaml")) as fh:
        return yaml.safe_load(fh)["appVersion"]


def plain_image(v):
    return "%s:%s" % (v["image"]["repository"], v["image"].get("tag") or app_version())


def cuda_image(v):
    cu = v["image"].get("cuda", {})
    tag = cu.get("tag") or "%s-cuda" % (v["image"].get("tag") or app_version())
    return "%s:%s" % (cu.get("repository") or v["image"]["repository"], tag)


def merged_values(overrides):
    with helm.Chart.load(CHART) as chart:
        return chart.merge_values(overrides)


def check_tp_pods(label, m, sts):
    """tpPods: a StatefulSet per group (replicas of them), tp pods each,
    started together, every pod tandem-worker itself (no mpirun) told its
    rank (the pod index), its group (the StatefulSet) and the generation
    (the StatefulSet's revision), one GPU, probes every rank answers."""
    v = m["verifier"]
    names = sorted(o["metadata"]["name"] for o in sts)
    svc = names[0].rsplit("-g", 1)[0] if names else ""
    want = sorted("%s-g%d" % (svc, g) for g in range(v["replicas"]))
    if names != want:
        fail("%s: model %s: tpPods: StatefulSets %s, expected %s" % (label, m["name"], names, want))
    for o in sts:
        name, spec = o["metadata"]["name"], o["spec"]
        if spec["replicas"] != v["tp"] or spec.get("podManagementPolicy") != "Parallel":
            # OrderedReady would wait for rank 0's readiness, which waits for the other ranks
            fail("%s: %s: %s pods (%s): a group is tp pods started together" % (label, name, spec["replicas"],
                                                                               spec.get("podManagementPolicy")))
        if spec["selector"]["matchLabels"].get("tandem.io/group") != name:
            fail("%s: %s: the selector does not name the group" % (label, name))
        c = spec["template"]["spec"]["containers"][0]
        argv = c.get("command", []) + c.get("args", [])
        got = (argv[0], flag(argv, "--tp"), flag(argv, "--tp-comm"), flag(argv, "--tp-rank"), flag(argv, "--tp-group"),
               flag(argv, "--tp-generation"), flag(argv, "--device"))
        if got != ("tandem-worker", str(v["tp"]), "nccl", "$(TP_RANK)", name, "$(TP_GENERATION)", "cuda"):
            fail("%s: %s: a rank's command line %s" % (label, name, got))
        env = {e["name"]: e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath") for e in c.get("env", [])}
        if (env.get("TP_RANK"), env.get("TP_GENERATION")) != ("metadata.labels['apps.kubernetes.io/pod-index']",
                                                             "metadata.labels['controller-revision-hash']"):
            fail("%s: %s: TP_RANK / TP_GENERATION come from %s / %s" % (label, name, env.get("TP_RANK"),
                                                                       env.get("TP_GENERATION")))
        if c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu") != 1:
            fail("%s: %s: a rank's pod has not one GPU" % (label, name))
        # the followers serve no Worker: every rank's readiness asks for ""
        if c["readinessProbe"]["grpc"].get("service", "") != "":
            fail("%s: %s: readiness asks for %s, which rank 1.. do not serve" % (label, name,
                                                                               c["readinessProbe"]["grpc"]["service"]))


def main():
    dump = sys.argv[sys.argv.index("--dump") + 1] if "--dump" in sys.argv else None
    print("helm engine: helm-c-sdk %s, Helm SDK %s" % (helm.helm_c_version(), helm.helm_sdk_version()))
    sets = [("defaults", {})]
    vdir = os.path.join(HERE, "values")
    for f in sorted(os.listdir(vdir)):
        sets.append((f[:-5], load_values(os.path.join(vdir, f))))
    for label, values in sets:
        report = helm.lint(CHART, values, strict=True)
        for m in report.get("messages", []):
            if m["severity"] >= 2:
                fail("%s: helm lint: %s: %s" % (label, m["path"], m["error"]))
        for e in report.get("errors", []):
            fail("%s: helm lint: %s" % (label, e))
        try:
            manifests = render(values)
        except helm.HelmError as e:
            fail("%s: render failed: %s" % (label, e))
            continue
        objs = objects(manifests, label)
        kube_validate(objs, label)
        check_operator_facts(objs, merged_values(values), label)
        if dump:
            os.makedirs(os.path.join(dump, label), exist_ok=True)
            with open(os.path.join(dump, label, "manifests.yaml"), "w") as f:
                for path, text in sorted(manifests.items()):
                    if not path.endswith("NOTES.txt") and text.strip():
                        f.write("---\n# Source: %s\n%s\n" % (path, text.strip()))
        print("ok: %s (%d objects)" % (label, len(objs)))
    bdir = os.path.join(HERE, "bad")
    for f in sorted(os.listdir(bdir)):
        path = os.path.join(bdir, f)
        with open(path) as fh:
            first = fh.readline()
        want = first.split("expect:", 1)[1].strip()
        try:
            render(load_values(path))
            fail("bad/%s rendered; the schema should refuse it" % f)
        except helm.HelmValuesError as e:
            if want not in str(e):
                fail("bad/%s: the error does not name %s: %s" % (f, want, e))
            else:
                print("ok: bad/%s refused: %s" % (f, " ".join(str(e).split())[-110:]))
    # every value is documented in the chart's README
    with open(os.path.join(CHART, "README.md")) as fh:
        readme = fh.read()
    for path in value_paths(load_values(os.path.join(CHART, "values.yaml"))):
        if "`%s`" % path not in readme:
            fail("helm/tandem/README.md does not document `%s`" % path)
    # the schema itself is a valid draft-07 schema
    import jsonschema
    with open(os.path.join(CHART, "values.schema.json")) as fh:
        jsonschema.Draft7Validator.check_schema(json.load(fh))
    for path in [os.path.join(CHART, "Chart.yaml"), os.path.join(CHART, "values.yaml")] + \
            [os.path.join(vdir, f) for f in sorted(os.listdir(vdir))] + \
            [os.path.join(bdir, f) for f in sorted(os.listdir(bdir))]:
        with open(path) as fh:
            for p in linter.run(fh.read(), YAMLLINT):
                if p.level == "error":
                    fail("%s:%d: yamllint: %s" % (os.path.relpath(path, HERE), p.line, p.message))
    if failures:
        print("\n%d chart check(s) failed" % len(failures))
        return 1
    print("\nchart checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
