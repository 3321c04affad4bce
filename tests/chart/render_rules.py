"""Prints the chart's alerting rules as a Prometheus rule file, rendered by the
real Helm engine, for the integration tests that load them into a real
Prometheus (tests/it/profiles.rs).

usage: render_rules.py '{"metricNaming": "otel", "alerts": {"notReadyFor": "1s"}}'
"""
import json
import pathlib
import sys

import helm_python
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "kube-node-status"

values = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
values["gmpRules"] = {"enabled": True}
# GMP rules read what a PodMonitoring scrapes; the chart refuses them without one.
values["podMonitoring"] = {"enabled": True}
with helm_python.Chart.load(str(CHART)) as chart:
    out = chart.render(values, name="kns", namespace="monitoring", is_install=True)
rules = [doc for name, text in out.items() if not name.endswith("NOTES.txt")
         for doc in yaml.safe_load_all(text) if doc and doc.get("kind") == "Rules"]
if len(rules) != 1:
    sys.exit(f"expected one Rules object, rendered {len(rules)}")
print(yaml.safe_dump({"groups": rules[0]["spec"]["groups"]}))
