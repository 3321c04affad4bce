"""Serve Nodes from kmock's KubernetesEmulator (a third-party Kubernetes API emulator).

Usage: python kmock_cluster.py NODES_JSON PORT_FILE [PORT]
Reads a JSON list of Node objects, serves them on a loopback port (PORT, or a
free one), writes the port to PORT_FILE, and runs until killed. A fixed PORT
lets a test stop the emulator and start it again where clients expect it. Changes go through the emulator's
own HTTP API (PATCH and DELETE on /api/v1/nodes/NAME), as a client would make them.
It also serves coordination.k8s.io/v1 Leases (created and merge-patched by the
exporters' leader election) with kmock's own stateful handling.
"""
import asyncio
import json
import sys

import kmock


async def main() -> None:
    nodes_file, port_file = sys.argv[1], sys.argv[2]
    port = int(sys.argv[3]) if len(sys.argv) > 3 else None
    with open(nodes_file) as f:
        nodes = json.load(f)
    async with kmock.KubernetesEmulator() as emulator, kmock.Server(emulator, port=port) as server:
        emulator.resources['v1/nodes'] = {}
        emulator.resources['coordination.k8s.io/v1/leases'] = {}
        for node in nodes:
            emulator.objects[kmock.resource('', 'v1', 'nodes'), None, node['metadata']['name']] = node
        with open(port_file + '.tmp', 'w') as f:
            f.write(str(server.port))
        import os
        os.rename(port_file + '.tmp', port_file)
        await asyncio.Event().wait()


asyncio.run(main())
