#!/usr/bin/env python3
"""Collector outage with flapping nodes: does the condition-change log queue
keep the exporter's memory flat?

Starts the fake API server (generated nodes, Ready flips across the cluster,
kubelet status re-posts) and the release binary with OTLP metrics and logs
pointed at a port where nothing listens, so every export fails as it does
while a collector is down. Every --every seconds it samples the exporter's
resident memory and its log-record counters from /metrics. Prints a table
and writes --out (JSON).

    .venv/bin/python bench/logs_outage.py --minutes 10
"""

import argparse
import json
import os
import re
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = ROOT / "target" / "release" / "kube-node-status"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(url, timeout=30):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def wait_for(pred, timeout, what):
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        try:
            if pred():
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"timed out waiting for {what}")


def rss_mib(pid):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return None


def counter(body, name, labels=""):
    m = re.search(rf"^{re.escape(name)}{re.escape(labels)}\S* (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--nodes", type=int, default=1000)
    p.add_argument("--flips-per-second", type=float, default=2.0)
    p.add_argument("--every", type=float, default=30)
    p.add_argument("--out", default="bench/logs-outage.json")
    args = p.parse_args()

    work = Path(tempfile.mkdtemp())
    api_port, http_port, dead_port = free_port(), free_port(), free_port()
    procs = []
    try:
        procs.append(subprocess.Popen(
            [str(BIN), "fake-apiserver", "--nodes", str(args.nodes), "--flips-per-second",
             str(args.flips_per_second), "--status-report-period", "5m", "--listen", f"127.0.0.1:{api_port}",
             "--kubeconfig-out", str(work / "kubeconfig")],
            stdout=subprocess.DEVNULL, stderr=open(work / "api.log", "w")))
        wait_for(lambda: (work / "kubeconfig").exists() and get(f"http://127.0.0.1:{api_port}/fake/stats"), 120,
                 "the fake API server")
        exporter = subprocess.Popen(
            [str(BIN), "--kubeconfig", str(work / "kubeconfig"), "--listen-address", f"127.0.0.1:{http_port}",
             "--metrics-exporter", "prometheus,otlp", "--traces-exporter", "none", "--log-format", "text"],
            stdout=subprocess.DEVNULL, stderr=open(work / "exporter.log", "w"),
            env={**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{dead_port}"})
        procs.append(exporter)
        metrics = f"http://127.0.0.1:{http_port}"
        wait_for(lambda: get(f"{metrics}/readyz") is not None, 300, "/readyz")
        samples = []
        start = time.monotonic()
        while True:
            elapsed = time.monotonic() - start
            body = get(f"{metrics}/metrics")
            sample = {
                "seconds": round(elapsed),
                "rss_mib": round(rss_mib(exporter.pid), 1),
                "changes_dropped": counter(body, "kube_node_status_logs_records_total", '{outcome="dropped"'),
                "queued": counter(body, "kube_node_status_logs_queued"),
                "metric_export_failures": counter(body, "kube_node_status_otlp_export_failures_total"),
            }
            samples.append(sample)
            print(json.dumps(sample), flush=True)
            if elapsed >= args.minutes * 60:
                break
            time.sleep(args.every)
        rss = [s["rss_mib"] for s in samples]
        after_fill = [s["rss_mib"] for s in samples if s["queued"] >= 2048] or rss
        summary = {
            "nodes": args.nodes,
            "flips_per_second": args.flips_per_second,
            "minutes": args.minutes,
            "rss_mib_first": rss[0],
            "rss_mib_last": rss[-1],
            "rss_mib_max": max(rss),
            "rss_mib_spread_once_full": round(max(after_fill) - min(after_fill), 1),
            "records_dropped": samples[-1]["changes_dropped"],
            "queued_last": samples[-1]["queued"],
            "samples": samples,
        }
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        print(json.dumps({k: v for k, v in summary.items() if k != "samples"}, indent=2))
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
