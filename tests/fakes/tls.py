"""A throw-away certificate for test servers on 127.0.0.1, made with the ``openssl`` command.

The certificate is self-signed, so it is its own CA: a client trusts it when ``SSL_CERT_FILE``
names it, exactly as it would trust a company's private CA, and refuses it otherwise.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from ..conftest import openssl_path


def self_signed(folder: Path) -> tuple[Path, Path]:
    """``(certificate, key)`` files for ``CN=127.0.0.1`` (IP and DNS ``localhost`` names), valid 2 days."""
    folder.mkdir(parents=True, exist_ok=True)
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl_path(), "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
                    "-nodes", "-keyout", key, "-out", cert, "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
                    "-addext", "basicConstraints=critical,CA:TRUE"],
                   check=True, capture_output=True)
    return cert, key
