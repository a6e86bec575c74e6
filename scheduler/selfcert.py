"""A self-signed certificate for a team head's listener, and its fingerprint.

A head started with `advertise` must take `labq join` requests over the network, and
nothing crosses a network in clear here (see api.TcpApiServer). An admin who gave
tls_cert/tls_key keeps theirs; otherwise the daemon makes one with the system's
`openssl` (no Python crypto package needed) and the invite carries its SHA-256, so
a joining node pins it instead of trusting a CA (as `kubeadm join` pins the CA hash).
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
import subprocess
from pathlib import Path


class CertError(Exception):
    """No certificate could be made; the message is user-facing."""


def ensure(state_dir: Path, host: str) -> tuple[str, str]:
    """(cert, key) under state_dir/tls for `host`, made on first use (0600 key)."""
    tls = state_dir / "tls"
    cert, key = tls / "cert.pem", tls / "key.pem"
    if cert.exists() and key.exists() and host in cert_hosts(cert):
        return str(cert), str(key)
    tls.mkdir(mode=0o700, exist_ok=True)
    try:
        ipaddress.ip_address(host)
        san = f"IP:{host}"
    except ValueError:
        san = f"DNS:{host}"
    old = os.umask(0o077)
    try:
        out = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-keyout", str(key), "-out", str(cert), "-days", "3650", "-subj", f"/CN={host}",
             "-addext", f"subjectAltName={san}"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CertError(f"cannot make a TLS certificate for {host} (openssl): {e}") from None
    finally:
        os.umask(old)
    if out.returncode != 0:
        raise CertError(f"cannot make a TLS certificate for {host}: {out.stderr.strip().splitlines()[-1:]}")
    (tls / "hosts").write_text(host + "\n")
    return str(cert), str(key)


def cert_hosts(cert: Path) -> list[str]:
    try:
        return (cert.parent / "hosts").read_text().split()
    except OSError:
        return []


def fingerprint(cert: str) -> str:
    """SHA-256 of the certificate (DER), hex: what `labq join --cert-sha256` pins."""
    der = ssl.PEM_cert_to_DER_cert(Path(cert).read_text())
    return hashlib.sha256(der).hexdigest()
