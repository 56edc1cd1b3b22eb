"""aetcd or python3-etcd3 over TLS as a user, run as a subprocess (each has its own etcd protos).

    tls_auth_client.py aetcd|etcd3 ENDPOINT CA CERT KEY USER PASSWORD PREFIX

Logs in as USER, puts and gets PREFIX+"k", tries a key outside PREFIX (expected to be refused),
then logs in with a wrong password; prints one JSON object with what happened. aetcd 1.0 has no
TLS option: its channel factory (``aetcd.rpc.insecure_channel``) is swapped for one that returns
a secure channel with the same files, which is all the library's own code then uses.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any


def outcome(fn: Any) -> str:
    try:
        fn()
    except Exception as exc:  # the library's own error class and message are the result
        return f"{type(exc).__name__}: {exc}"
    return "ok"


async def run_aetcd(host: str, port: int, ca: bytes, cert: bytes, key: bytes, user: str, password: str,
                    prefix: bytes) -> dict[str, Any]:
    import aetcd
    import aetcd.rpc
    import grpc

    creds = grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)
    aetcd.rpc.insecure_channel = lambda target, options=None: grpc.aio.secure_channel(target, creds, options)
    out: dict[str, Any] = {}
    async with aetcd.Client(host=host, port=port, username=user, password=password, timeout=10) as c:
        await c.put(prefix + b"k", b"v1")
        got = await c.get(prefix + b"k")
        out["get"] = got.value.decode() if got is not None else None
        try:
            await c.put(b"/outside", b"x")
            out["denied"] = "ok"
        except Exception as exc:
            out["denied"] = f"{type(exc).__name__}: {exc}"
    try:
        async with aetcd.Client(host=host, port=port, username=user, password=password + "-wrong", timeout=10) as c:
            await c.get(prefix + b"k")
        out["wrong_password"] = "ok"
    except Exception as exc:
        out["wrong_password"] = f"{type(exc).__name__}: {exc}"
    return out


def run_etcd3(host: str, port: int, ca: str, cert: str, key: str, user: str, password: str,
              prefix: bytes) -> dict[str, Any]:
    import etcd3

    out: dict[str, Any] = {}
    c = etcd3.client(host=host, port=port, ca_cert=ca, cert_key=key, cert_cert=cert, user=user, password=password,
                     timeout=10)
    c.put(prefix + b"k", b"v2")
    value, _meta = c.get(prefix + b"k")
    out["get"] = value.decode() if value is not None else None
    out["denied"] = outcome(lambda: c.put(b"/outside", b"x"))
    c.close()
    out["wrong_password"] = outcome(lambda: etcd3.client(
        host=host, port=port, ca_cert=ca, cert_key=key, cert_cert=cert, user=user, password=password + "-wrong",
        timeout=10).get(prefix + b"k"))
    return out


def main() -> None:
    lib, endpoint, ca, cert, key, user, password, prefix = sys.argv[1:9]
    host, port = endpoint.rsplit(":", 1)
    if lib == "aetcd":
        result = asyncio.run(asyncio.wait_for(run_aetcd(
            host, int(port), Path(ca).read_bytes(), Path(cert).read_bytes(), Path(key).read_bytes(), user, password,
            prefix.encode()), 60))
    else:
        result = run_etcd3(host, int(port), ca, cert, key, user, password, prefix.encode())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
