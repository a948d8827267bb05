#!/usr/bin/env python3
"""Checks Grafana dashboard JSON files, for scripts/check-deploy (no Grafana linter is packaged).

For each dashboard: it parses, has the top-level keys Grafana needs, panel ids are unique, every
panel's data source is a declared variable or input (never a uid from one Grafana instance), and
every query parses as PromQL. The last check writes each `expr`, its Grafana variables replaced
by concrete values, as a recording rule to a file and runs `promtool check rules` on it.

Usage: check_dashboard.py [--rules-out FILE] DASHBOARD.json...
--rules-out keeps that rules file, so the caller can check the metric names it uses.
Standard library only.
"""

import json
import re
import subprocess
import sys
import tempfile

REQUIRED_KEYS = ("title", "uid", "panels", "schemaVersion", "templating")

# Grafana's built-in time variables, as a 15 s-scrape Prometheus would see them.
BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "15s",
    "__range": "6h",
    "__interval_ms": "15000",
    "__range_ms": "21600000",
    "__range_s": "21600",
}

# $name, ${name}, ${name:format} and [[name]].
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def walk_panels(panels):
    """Every panel, including those inside collapsed rows."""
    for panel in panels:
        yield panel
        yield from walk_panels(panel.get("panels", []))


def variable_values(dashboard):
    """A concrete value for each template variable: its current value, or `.*` for All."""
    values = {}
    for var in dashboard["templating"].get("list", []):
        current = var.get("current", {}).get("value")
        if isinstance(current, list):
            current = current[0] if current else None
        if current in (None, "", "$__all"):
            current = var.get("allValue") or ".*"
        values[var["name"]] = current
    return values


def substitute(expr, values):
    def value(match):
        name = next(g for g in match.groups() if g)
        if name in BUILTINS:
            return BUILTINS[name]
        if name in values:
            return values[name]
        raise KeyError(name)

    return VARIABLE.sub(value, expr)


def datasource_names(dashboard):
    """Names a panel may use as its data source uid: datasource variables and __inputs."""
    names = {v["name"] for v in dashboard["templating"].get("list", []) if v.get("type") == "datasource"}
    names |= {i["name"] for i in dashboard.get("__inputs", []) if i.get("type") == "datasource"}
    return names


def check_datasource(where, datasource, allowed, errors):
    uid = datasource.get("uid", "") if isinstance(datasource, dict) else str(datasource or "")
    match = VARIABLE.fullmatch(uid)
    name = match and next(g for g in match.groups() if g)
    if name not in allowed:
        errors.append(f"{where}: data source {uid!r} is not a datasource variable or input ({sorted(allowed)})")


def check(path, rules, errors):
    """Checks one dashboard; appends its queries to `rules`. Returns its panel count."""
    try:
        with open(path, encoding="utf-8") as f:
            dashboard = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        errors.append(f"{path}: {e}")
        return 0
    missing = [k for k in REQUIRED_KEYS if k not in dashboard]
    if missing:
        errors.append(f"{path}: missing top-level keys {missing}")
        return 0
    values = variable_values(dashboard)
    allowed = datasource_names(dashboard)
    seen_ids = {}
    panels = list(walk_panels(dashboard["panels"]))
    for panel in panels:
        where = f"{path}: panel {panel.get('id')} {panel.get('title')!r}"
        pid = panel.get("id")
        if not isinstance(pid, int):
            errors.append(f"{where}: id must be an integer")
        elif pid in seen_ids:
            errors.append(f"{where}: id {pid} is also used by {seen_ids[pid]!r}")
        else:
            seen_ids[pid] = panel.get("title")
        if "gridPos" not in panel:
            errors.append(f"{where}: no gridPos")
        if panel.get("type") == "row":
            continue
        check_datasource(where, panel.get("datasource"), allowed, errors)
        targets = panel.get("targets", [])
        if not targets:
            errors.append(f"{where}: no queries")
        ref_ids = [t.get("refId") for t in targets]
        if len(set(ref_ids)) != len(ref_ids):
            errors.append(f"{where}: repeated refId in {ref_ids}")
        for target in targets:
            if "datasource" in target:
                check_datasource(f"{where} query {target.get('refId')}", target["datasource"], allowed, errors)
            expr = target.get("expr", "")
            if not expr.strip():
                errors.append(f"{where} query {target.get('refId')}: empty expr")
                continue
            try:
                concrete = substitute(expr, values)
            except KeyError as e:
                errors.append(f"{where} query {target.get('refId')}: unknown variable ${e.args[0]}")
                continue
            rules.append((f"{where} query {target.get('refId')}", concrete))
    print(f"{path}: {len(panels)} panels, ids unique: {len(seen_ids) == len(panels)}")
    return len(panels)


def promtool_check(rules, rules_file):
    """Writes `rules` as recording rules (JSON is YAML) and runs promtool on them."""
    doc = {
        "groups": [
            {
                "name": "dashboard-queries",
                # Rule names only need to be valid and unique; the error output names the panel.
                "rules": [{"record": f"dashboard:query_{i}", "expr": expr} for i, (_, expr) in enumerate(rules)],
            }
        ]
    }
    with open(rules_file, "w", encoding="utf-8") as f:
        json.dump(doc, f, indent=1)
    result = subprocess.run(["promtool", "check", "rules", rules_file], capture_output=True, text=True)
    if result.returncode == 0:
        return []
    errors = [result.stdout + result.stderr]
    for i, (where, expr) in enumerate(rules):
        if f'"dashboard:query_{i}"' in result.stdout + result.stderr:
            errors.append(f"{where} does not parse: {expr}")
    return errors


def main(argv):
    rules_out = None
    if argv[:1] == ["--rules-out"]:
        rules_out, argv = argv[1], argv[2:]
    if not argv:
        print(__doc__, file=sys.stderr)
        return 2
    errors, rules = [], []
    for path in argv:
        check(path, rules, errors)
    with tempfile.NamedTemporaryFile(suffix=".yml") as tmp:
        errors += promtool_check(rules, rules_out or tmp.name)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(f"{len(rules)} queries parse as PromQL (promtool check rules)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
