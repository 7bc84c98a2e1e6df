"""A throwaway CA and per-node certificates, made with `openssl` (sandbox and tests only).

`make_ca(dir)` writes ca.key/ca.pem; `make_node_cert(dir, ca, name, ip)` writes
<name>.key/<name>.pem with the IP as a subjectAltName (clients check it) and usable both as
a server and as a client certificate. Every key is 0600; the directory is made 0700.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

DAYS = "30"


class CertPair(NamedTuple):
    cert: str
    key: str


def _run(*argv: str) -> None:
    r = subprocess.run(["openssl", *argv], capture_output=True, text=True, timeout=30)
    if r.returncode != 0:
        raise RuntimeError(f"openssl {argv[0]} failed: {r.stderr.strip()[-300:]}")


def _private(dir: Path) -> Path:
    dir.mkdir(parents=True, exist_ok=True)
    os.chmod(dir, 0o700)
    return dir


def make_ca(dir: Path | str, name: str = "manatee sandbox CA") -> CertPair:
    d = _private(Path(dir))
    key, cert = d / "ca.key", d / "ca.pem"
    _run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", DAYS, "-subj", f"/CN={name}",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    os.chmod(key, 0o600)
    return CertPair(str(cert), str(key))


def make_node_cert(dir: Path | str, ca: CertPair, name: str, ip: str) -> CertPair:
    d = _private(Path(dir))
    key, csr, cert, ext = d / f"{name}.key", d / f"{name}.csr", d / f"{name}.pem", d / f"{name}.ext"
    _run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}")
    os.chmod(key, 0o600)
    ext.write_text(f"subjectAltName=IP:{ip}\nbasicConstraints=CA:FALSE\n"
                   "extendedKeyUsage=serverAuth,clientAuth\n")
    _run("x509", "-req", "-in", str(csr), "-CA", ca.cert, "-CAkey", ca.key, "-CAcreateserial",
         "-out", str(cert), "-days", DAYS, "-extfile", str(ext))
    csr.unlink()
    ext.unlink()
    return CertPair(str(cert), str(key))
