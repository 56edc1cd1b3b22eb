"""A configuration watcher: keep a live copy of every key under a prefix, updated as it changes.

Against `make run`'s cluster:

    python examples/config_watcher.py                    # prints the config, then every change
    conclave put config/feature-x on                     # in another terminal
    python examples/config_watcher.py --set timeout 30   # or change it from here

The watcher reads the prefix once, then watches from the revision right after that read, so no
change can fall between the read and the watch; after a reconnect the watch resumes from the last
revision it delivered, so no change is lost or applied twice.
"""

from __future__ import annotations

import argparse
import sys

from conclave import Client
from conclave.client import EventType

ENDPOINTS = "127.0.0.1:2381,127.0.0.1:22381,127.0.0.1:32381"
PREFIX = "config/"


def watch(client: Client, max_events: int) -> int:
    snapshot = client.range(PREFIX, PREFIX[:-1] + chr(ord(PREFIX[-1]) + 1))
    config = {kv.key.decode()[len(PREFIX):]: kv.value.decode() for kv in snapshot.kvs}
    print(f"config at revision {snapshot.header.revision}: {config}", flush=True)
    changes = client.watch(PREFIX, prefix=True, start_revision=snapshot.header.revision + 1)
    for seen, event in enumerate(changes, 1):
        name = event.kv.key.decode()[len(PREFIX):]
        if event.type == EventType.PUT:
            config[name] = event.kv.value.decode()
            print(f"rev {event.kv.mod_revision}: set {name} = {config[name]!r}", flush=True)
        else:
            config.pop(name, None)
            print(f"rev {event.kv.mod_revision}: removed {name}", flush=True)
        print(f"  now: {config}", flush=True)
        if max_events and seen >= max_events:
            break
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--endpoints", default=ENDPOINTS)
    p.add_argument("--set", nargs=2, metavar=("NAME", "VALUE"), help="set one setting and exit")
    p.add_argument("--max-events", type=int, default=0, help="exit after this many changes (0: never)")
    args = p.parse_args()
    with Client(args.endpoints.split(",")) as client:
        if args.set:
            client.put(PREFIX + args.set[0], args.set[1])
            return 0
        try:
            return watch(client, args.max_events)
        except KeyboardInterrupt:
            return 130


if __name__ == "__main__":
    sys.exit(main())
