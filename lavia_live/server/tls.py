"""Certificates for ``lavia serve`` beyond localhost.

Browsers give camera access only to secure origins (``https://``, or ``http://localhost``).
On a LAN, serve with your own certificate (``--tls-cert``/``--tls-key``), or with
``--self-signed``: a certificate made once and kept in ``$XDG_CACHE_HOME/lavia/tls`` (the
browser warns about it once; after the person accepts, the camera works).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from lavia_live.atomic import atomic_write_bytes
from lavia_live.errors import ConfigError

VALID_DAYS = 825  # the longest validity Apple platforms accept for a TLS certificate


def tls_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "lavia" / "tls"


def server_context(cert: Path, key: Path) -> ssl.SSLContext:
    """An HTTPS server context, or a :class:`ConfigError` naming the file at fault."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise ConfigError(f"TLS: no such file: {exc.filename}") from exc
    except ssl.SSLError as exc:
        raise ConfigError(
            f"TLS: {cert} / {key}: not a matching certificate and key ({exc})"
        ) from exc
    return context


def _names(host: str) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName("localhost"), x509.DNSName(socket.gethostname())]
    ips = {"127.0.0.1", "::1"}
    if host not in ("", "0.0.0.0", "::"):
        try:
            ipaddress.ip_address(host)
            ips.add(host)
        except ValueError:
            names.append(x509.DNSName(host))
    names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in sorted(ips)]
    return names


def self_signed(host: str, folder: Path | None = None) -> tuple[Path, Path]:
    """(certificate, key) files of a self-signed certificate for ``host``; made on first
    use, made again when it has expired."""
    folder = folder or tls_dir()
    cert_path, key_path = folder / "lavia-selfsigned.crt", folder / "lavia-selfsigned.key"
    now = datetime.datetime.now(datetime.UTC)
    if cert_path.is_file() and key_path.is_file():
        existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
        if existing.not_valid_after_utc > now + datetime.timedelta(days=1):
            return cert_path, key_path
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "LaViA Live (self-signed)")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(_names(host)), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    folder.mkdir(parents=True, exist_ok=True)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    atomic_write_bytes(key_path, key_pem)
    os.chmod(key_path, 0o600)
    atomic_write_bytes(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path
