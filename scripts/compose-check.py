#!/usr/bin/env python3
"""Checks deploy/compose.yaml without network or a container engine (CI runs it).

usage: compose-check.py [FILE]   (default: deploy/compose.yaml)

Parses the file as YAML (anchors and merge keys resolved) and checks what the
deployment promises: a PostgreSQL service with a health check and a named volume,
two API replicas (FUNKREC__CLUSTER__ROLE=api) and one trainer, every funkrec service
with a `funkrec healthcheck` health check, its API keys from a declared secret file
(auth.keys_file), the database URL naming the PostgreSQL service and no password,
started only once PostgreSQL is healthy; every named volume and secret declared.
With `docker compose` or `podman-compose` on PATH, their own `config` check runs too.
Prints one line per failed check and exits 1 if any failed.
"""
import os
import shutil
import subprocess
import sys
from urllib.parse import urlparse

try:
    import yaml
except ImportError:
    sys.exit("compose-check.py needs PyYAML (pip install pyyaml, or Debian's python3-yaml)")

path = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "deploy", "compose.yaml")
with open(path) as f:
    doc = yaml.safe_load(f)

errors = []


def check(ok, what):
    if not ok:
        errors.append(what)
    return ok


def env_of(svc):
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def names(entries):
    """Secret or volume names used by a service (short or long syntax)."""
    out = []
    for e in entries or []:
        if isinstance(e, dict):
            out.append(e.get("source"))
        else:
            out.append(str(e).split(":", 1)[0])
    return out


services = doc.get("services") or {}
volumes = doc.get("volumes") or {}
secrets = doc.get("secrets") or {}
check(services, "no services")

pg = [n for n, s in services.items() if "postgres" in str(s.get("image", ""))]
if check(len(pg) == 1, f"expected one PostgreSQL service, found {pg}"):
    pg_name, pg_svc = pg[0], services[pg[0]]
    check("healthcheck" in pg_svc, f"{pg_name}: no health check")
    vols = [v.split(":", 1)[0] for v in pg_svc.get("volumes") or [] if isinstance(v, str)]
    check(any(v in volumes for v in vols), f"{pg_name}: its data is not on a named volume")
else:
    pg_name = None

roles = {}
for name, svc in services.items():
    env = env_of(svc)
    if "FUNKREC__STORAGE__DATABASE_URL" not in env:
        continue
    role = env.get("FUNKREC__CLUSTER__ROLE", "all")
    roles.setdefault(role, []).append(name)
    url = urlparse(env["FUNKREC__STORAGE__DATABASE_URL"])
    check(url.scheme in ("postgres", "postgresql"), f"{name}: database URL is not postgres://")
    check(url.hostname == pg_name, f"{name}: database host {url.hostname!r} is not the service {pg_name!r}")
    check(url.password is None, f"{name}: the database URL carries a password (use the secret)")
    test = (svc.get("healthcheck") or {}).get("test") or []
    test = " ".join(test) if isinstance(test, list) else str(test)
    check("funkrec healthcheck" in test or ("funkrec" in test and "healthcheck" in test),
          f"{name}: health check does not run `funkrec healthcheck`")
    keys = env.get("FUNKREC__AUTH__KEYS_FILE", "")
    used = names(svc.get("secrets"))
    if check(keys.startswith("/run/secrets/"), f"{name}: API keys not from a secret (FUNKREC__AUTH__KEYS_FILE)"):
        secret = keys[len("/run/secrets/"):]
        check(secret in used, f"{name}: secret {secret!r} not given to the service")
    check("FUNKREC__AUTH__KEYS" not in env, f"{name}: API keys inline in the environment")
    check("FUNKREC__AUTH__ALLOW_OPEN" not in env, f"{name}: open access allowed")
    dep = svc.get("depends_on") or {}
    check(isinstance(dep, dict) and (dep.get(pg_name) or {}).get("condition") == "service_healthy",
          f"{name}: does not wait for {pg_name} to be healthy")
    for s in used:
        check(s in secrets and "file" in secrets[s], f"{name}: secret {s!r} not declared with a file")
    for v in svc.get("volumes") or []:
        src = v.split(":", 1)[0] if isinstance(v, str) else v.get("source")
        if src and not src.startswith((".", "/")):
            check(src in volumes, f"{name}: volume {src!r} not declared")

check(len(roles.get("api", [])) == 2, f"expected two API replicas, found {roles.get('api', [])}")
check(len(roles.get("trainer", [])) == 1, f"expected one trainer, found {roles.get('trainer', [])}")
check(set(roles) <= {"api", "trainer"}, f"unexpected roles {sorted(set(roles) - {'api', 'trainer'})}")

for tool in (["docker", "compose"], ["podman-compose"]):
    if shutil.which(tool[0]) is None:
        continue
    probe = subprocess.run(tool + ["version"], capture_output=True, text=True)
    if probe.returncode != 0:
        continue
    # (the secret files are the operator's: a complaint about them is not the file's)
    r = subprocess.run(tool + ["-f", path, "config", "--quiet", "--no-interpolate"],
                       capture_output=True, text=True)
    check(r.returncode == 0 or "secret" in r.stderr.lower(),
          f"{' '.join(tool)} config: {r.stderr.strip()}")
    break

for e in errors:
    print(f"{path}: {e}")
if errors:
    sys.exit(1)
print(f"{path}: ok ({len(services)} services: {', '.join(f'{r}={len(n)}' for r, n in sorted(roles.items()))})")
