"""The self-signed certificate HTTPS uses until the user installs their own."""
from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import socket
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ... import fsutil

log = logging.getLogger(__name__)

VALID_DAYS = 3650


def ensure_self_signed(folder: Path, listen_host: str) -> tuple[Path, Path]:
    """``folder/cert.pem`` and ``folder/key.pem``, made on first use (EC P-256, SAN: localhost, the host name,
    127.0.0.1, ::1 and the listen address); kept across restarts so a browser's exception stays valid."""
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    if cert_path.exists() and key_path.exists():
        return cert_path, key_path
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    key = ec.generate_private_key(ec.SECP256R1())
    hostname = socket.gethostname() or "bmsgw"
    names: list[x509.GeneralName] = [x509.DNSName("localhost")]
    if hostname != "localhost":
        names.append(x509.DNSName(hostname))
    ips = {"127.0.0.1", "::1"}
    try:
        addr = ipaddress.ip_address(listen_host)
        if not addr.is_unspecified:
            ips.add(str(addr))
    except ValueError:
        if listen_host and listen_host not in (hostname, "localhost"):
            names.append(x509.DNSName(listen_host))
    names += [x509.IPAddress(ipaddress.ip_address(i)) for i in sorted(ips)]
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64]),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bmsgw (self-signed)")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder()
            .subject_name(subject).issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(key, hashes.SHA256()))
    key_bytes = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption())
    # the certificate goes, the new key comes, the certificate last: a start that finds both finds a pair
    cert_path.unlink(missing_ok=True)
    fsutil.atomic_write(key_path, key_bytes, mode=0o600)
    fsutil.atomic_write(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    log.warning("made a self-signed certificate %s (SHA-256 fingerprint %s); install your own with web.tls.cert/key",
                cert_path, fingerprint(cert_path))
    return cert_path, key_path


def fingerprint(cert_path: Path) -> str:
    """SHA-256 fingerprint of the first certificate in a PEM file, as browsers show it (AB:CD:...)."""
    cert = x509.load_pem_x509_certificate(Path(cert_path).read_bytes())
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))
