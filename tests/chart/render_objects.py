"""Prints every object the chart renders for the given values, as one JSON
list, rendered by the real Helm engine (release "kns" in "monitoring"), for
the integration tests that run the exporter exactly as the chart deploys it
(tests/it/install.rs).

usage: render_objects.py '{"replicas": 2}'
"""
import json
import pathlib
import sys

import helm_python
import yaml

CHART = pathlib.Path(__file__).resolve().parents[2] / "helm" / "kube-node-status"

values = json.loads(sys.argv[1]) if len(sys.argv) > 1 else {}
with helm_python.Chart.load(str(CHART)) as chart:
    out = chart.render(values, name="kns", namespace="monitoring", is_install=True)
objects = [doc for name, text in sorted(out.items()) if not name.endswith("NOTES.txt")
           for doc in yaml.safe_load_all(text) if doc]
json.dump(objects, sys.stdout)
