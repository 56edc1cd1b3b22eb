"""Settings for every test process.

Members run inside test processes (in-process servers) as well as in ``conclave serve``
subprocesses. ``conclave serve`` switches grpc's fork handlers off before grpc loads, because
its snapshot child (server/snapshotter.py) never touches grpc; the test process must do the
same, or grpc's after-fork handler runs in that child with the other threads' locks held
(seen as the child dying of SIGSEGV or SIGABRT and the snapshot being retried).
"""

import os

os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
