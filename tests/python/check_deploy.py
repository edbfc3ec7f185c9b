#!/usr/bin/env python3
"""Checks that the deployment kit in deploy/ fits together.

Each file is written for a different tool (systemd, Docker, Kubernetes,
the gateway); this reads them all and checks what one assumes of another:
the config path the unit, the image and the Deployment pass; the ports
gateway.toml listens on against the ports the manifests expose and probe;
the SRV name the gateway resolves against the headless Service that
publishes it; the files kustomize needs. Prints ``deploy ok`` or raises.

usage: check_deploy.py REPO_ROOT
"""
import configparser
import os
import sys
import tomllib

import yaml


def fail(msg):
    raise SystemExit(f"deploy kit: {msg}")


def main(root):
    d = os.path.join(root, "deploy")
    with open(os.path.join(d, "gateway.toml"), "rb") as f:
        gw = tomllib.load(f)
    listen_port = int(gw["listen"][0]["url"].rsplit(":", 1)[1])
    metrics_port = int(gw["metrics"]["listen"].rsplit(":", 1)[1])

    # Kubernetes.
    with open(os.path.join(d, "kustomization.yaml")) as f:
        kust = yaml.safe_load(f)
    ns = kust["namespace"]
    docs = []
    for res in kust["resources"]:
        path = os.path.join(d, res)
        if not os.path.exists(path):
            fail(f"kustomization names {res}, which does not exist")
        with open(path) as f:
            docs += [x for x in yaml.safe_load_all(f) if x]
    for gen in kust["configMapGenerator"]:
        for file in gen["files"]:
            if not os.path.exists(os.path.join(d, file)):
                fail(f"configMapGenerator file {file} is missing")
    generated = {g["name"] for g in kust["configMapGenerator"] + kust["secretGenerator"]}
    by = {(x["kind"], x["metadata"]["name"]): x for x in docs}

    dep = by.get(("Deployment", "rpyc-gateway")) or fail("no Deployment rpyc-gateway")
    if dep["spec"]["replicas"] < 2:
        fail("the gateway Deployment needs at least 2 replicas")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    if ports.get("rpyc-tls") != listen_port:
        fail(f"containerPort rpyc-tls {ports.get('rpyc-tls')} != gateway.toml listener port {listen_port}")
    if ports.get("metrics") != metrics_port:
        fail(f"containerPort metrics {ports.get('metrics')} != gateway.toml metrics port {metrics_port}")
    probe = c["readinessProbe"]["httpGet"]
    if probe["path"] != "/healthz" or probe["port"] not in ("metrics", metrics_port):
        fail(f"readiness must be GET /healthz on the metrics port, not {probe}")
    config_arg = c["args"][c["args"].index("--config") + 1]
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    if mounts.get(config_arg) != "config":
        fail(f"--config {config_arg} is not where the config volume is mounted ({mounts})")
    tls_dir = os.path.join(os.path.dirname(config_arg), gw["listen"][0]["tls"])
    if mounts.get(tls_dir) != "tls":
        fail(f"the listener's tls directory {tls_dir} is not where the tls Secret is mounted ({mounts})")
    for v in pod["volumes"]:
        ref = (v.get("configMap") or {}).get("name") or (v.get("secret") or {}).get("secretName")
        if ref not in generated:
            fail(f"volume {v['name']} refers to {ref}, which kustomize does not generate")
    if pod["securityContext"].get("runAsNonRoot") is not True:
        fail("the gateway pod must run as non-root")
    svc = by.get(("Service", "rpyc-gateway")) or fail("no Service rpyc-gateway")
    if svc["spec"]["ports"][0]["targetPort"] != "rpyc-tls":
        fail("the gateway Service must target rpyc-tls")

    # The SRV name the gateway resolves is the one the headless Service publishes.
    head = by.get(("Service", "rpyc-upstream")) or fail("no headless Service rpyc-upstream")
    if head["spec"].get("clusterIP") != "None":
        fail("the upstream Service must be headless (clusterIP: None) to publish one SRV record per pod")
    port = head["spec"]["ports"][0]
    want = f"srv://_{port['name']}._{port['protocol'].lower()}.rpyc-upstream.{ns}.svc.cluster.local"
    urls = [u for up in gw["upstream"].values() for u in up.get("urls", []) + [up.get("url")] if u]
    if want not in urls:
        fail(f"gateway.toml resolves {urls}, but the headless Service publishes {want}")

    # systemd.
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str
    with open(os.path.join(d, "rpyc-gateway.service")) as f:
        # Repeated keys (ExecReload, SystemCallFilter) are legal in units.
        unit.read_string("\n".join(l for l in f.read().splitlines()
                                   if not l.startswith(("ExecReload=", "SystemCallFilter="))))
    svc = unit["Service"]
    for key, value in [("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("ProtectHome", "yes")]:
        if svc.get(key) != value:
            fail(f"rpyc-gateway.service must set {key}={value}")
    if not svc.get("User") or svc.get("User") == "root":
        fail("rpyc-gateway.service must run as a dedicated user")
    if "--check" not in svc.get("ExecStartPre", ""):
        fail("rpyc-gateway.service should check the configuration before starting")
    with open(os.path.join(d, "rpyc-gateway.service")) as f:
        text = f.read()
    if "ExecReload=/bin/kill -HUP $MAINPID" not in text:
        fail("rpyc-gateway.service must reload with SIGHUP")

    # Docker: the image's default command reads the path Kubernetes mounts.
    with open(os.path.join(d, "Dockerfile")) as f:
        dockerfile = f.read()
    if config_arg not in dockerfile or "USER nonroot" not in dockerfile:
        fail("the Dockerfile must run as non-root and read the config where Kubernetes mounts it")
    print("deploy ok")


if __name__ == "__main__":
    main(sys.argv[1])
