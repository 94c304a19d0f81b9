"""``mtls:`` server endpoints: TLS that only clients with a certificate from your CA get through.

``mtls:PORT:privateKey=KEY:certKey=CERT:caCerts=CA`` takes what Twisted's
``ssl:`` takes (``interface``, ``backlog``, ``extraCertChain``,
``dhParameters``), plus ``caCerts``: a PEM bundle file or a directory of PEM
files naming the CAs whose client certificates are accepted (files in it
that hold no certificate, a private key say, are skipped). A client without
a certificate, or with one the CAs did not sign, fails the handshake.
Protocol versions below TLS 1.2 are refused.

``client_certificate(transport)`` is what a handler sees of the client's
certificate (``Context.client_certificate``).
"""

from __future__ import annotations

import hashlib
import os
import re
from typing import Any, Final

from attrs import frozen

PEM_CERTIFICATE: Final = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


@frozen
class ClientCertificate:
    """Who connected, from their TLS certificate."""

    common_name: str | None
    dns_names: tuple[str, ...]
    uri_names: tuple[str, ...]
    sha256_fingerprint: str  # hex, lowercase, of the DER certificate


def client_certificate(transport: Any) -> ClientCertificate | None:
    """The certificate the peer of ``transport`` presented, or None (no TLS, or none presented)."""
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    try:
        peer = get()
    except Exception:  # noqa: BLE001 - not a TLS transport after all, or not handshaken
        return None
    if peer is None:
        return None
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    from cryptography.x509.oid import NameOID

    certificate = peer.to_cryptography() if hasattr(peer, "to_cryptography") else peer
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    common_name = names[0].value if names else None
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(alternatives.get_values_for_type(x509.DNSName))
        uri_names = tuple(alternatives.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns_names = uri_names = ()
    fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
    return ClientCertificate(
        common_name=str(common_name) if common_name is not None else None,
        dns_names=dns_names,
        uri_names=uri_names,
        sha256_fingerprint=fingerprint,
    )


def _read(path: str, what: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ValueError(f"mtls: cannot read {what} {path}: {e.strerror or e}") from None


def load_ca_certificates(path: str) -> list[Any]:
    """The CA certificates in a PEM bundle file, or in the PEM files of a directory
    (files without a certificate in them are skipped). At least one is required."""
    from twisted.internet import ssl

    if os.path.isdir(path):
        blobs = [
            _read(os.path.join(path, name), "CA file")
            for name in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, name))
        ]
    else:
        blobs = [_read(path, "caCerts")]
    certificates = []
    for blob in blobs:
        for pem in PEM_CERTIFICATE.findall(blob):
            try:
                certificates.append(ssl.Certificate.loadPEM(pem))
            except Exception as e:  # noqa: BLE001 - pyOpenSSL raises its own errors for bad PEM
                raise ValueError(f"mtls: a certificate in {path} does not load: {e}") from None
    if not certificates:
        raise ValueError(f"mtls: no PEM certificate in caCerts={path}")
    return certificates


def mtls_server_endpoint(
    reactor: Any,
    port: str,
    privateKey: str | None = None,  # noqa: N803 - the names of Twisted's ssl: endpoint
    certKey: str | None = None,  # noqa: N803
    caCerts: str | None = None,  # noqa: N803
    interface: str = "",
    backlog: str | int = 50,
    extraCertChain: str | None = None,  # noqa: N803
    dhParameters: str | None = None,  # noqa: N803
) -> Any:
    """An ``SSL4ServerEndpoint`` that requires a client certificate signed by one of ``caCerts``."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    options = mtls_options(privateKey, certKey, caCerts, extraCertChain, dhParameters)
    return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)


def mtls_options(
    privateKey: str | None,  # noqa: N803
    certKey: str | None,  # noqa: N803
    caCerts: str | None,  # noqa: N803
    extraCertChain: str | None = None,  # noqa: N803
    dhParameters: str | None = None,  # noqa: N803
) -> Any:
    """The ``CertificateOptions`` of an ``mtls:`` endpoint; every problem with the files is
    a ``ValueError`` of one line."""
    from OpenSSL.SSL import Error as SSLError
    from twisted.internet import ssl
    from twisted.python.filepath import FilePath

    if privateKey is None:
        raise ValueError("mtls: needs privateKey=PATH (and certKey=PATH, if the certificate is in another file)")
    if caCerts is None:
        raise ValueError("mtls: needs caCerts=PATH: a PEM bundle or a directory of the client CAs' certificates")
    key_pem = _read(privateKey, "privateKey")
    cert_pem = _read(certKey, "certKey") if certKey is not None else key_pem
    try:
        server = ssl.PrivateCertificate.loadPEM(cert_pem + b"\n" + key_pem)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"mtls: the server certificate and key do not load: {e}") from None
    chain = []
    if extraCertChain is not None:
        chain = [ssl.Certificate.loadPEM(pem).original for pem in PEM_CERTIFICATE.findall(_read(extraCertChain, "extraCertChain"))]
    trust = ssl.trustRootFromCertificates(load_ca_certificates(caCerts))
    try:
        options = ssl.CertificateOptions(
            privateKey=server.privateKey.original,
            certificate=server.original,
            extraCertChain=chain or None,
            trustRoot=trust,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            dhParameters=ssl.DiffieHellmanParameters.fromFile(FilePath(dhParameters)) if dhParameters else None,
        )
        options.getContext()  # a key that does not match its certificate fails here, at start-up
    except SSLError as e:
        raise ValueError(f"mtls: the server certificate and key do not go together: {e}") from None
    return options


# Why a TLS handshake failed, in a fixed vocabulary (it labels a metric): OpenSSL's
# words for each, as they appear in the error it reports.
HANDSHAKE_FAILURES: Final = ("no-certificate", "certificate-refused", "protocol-version", "not-tls", "other")
_HANDSHAKE_WORDS: Final = (
    ("no-certificate", ("did not return a certificate", "certificate required")),
    ("certificate-refused", ("certificate verify failed", "unknown ca", "certificate expired", "bad certificate")),
    ("protocol-version", ("unsupported protocol", "protocol version", "no protocols available")),
    ("not-tls", ("wrong version number", "http request", "packet length too long", "unknown protocol")),
)


def handshake_failure(transport: Any, reason: Any) -> str | None:
    """Why the TLS handshake on ``transport`` failed (from ``HANDSHAKE_FAILURES``),
    or None if the connection was not TLS or its handshake had completed."""
    # Asked at every close: a plain TCP transport, or a completed handshake, answers at once.
    if getattr(transport, "_handshakeDone", True):  # TLSMemoryBIOProtocol's own flag
        return None
    from OpenSSL.SSL import Error as SSLError

    if reason is None or not hasattr(reason, "check") or not reason.check(SSLError):
        return None
    words = str(reason.value).lower()
    for name, phrases in _HANDSHAKE_WORDS:
        if any(phrase in words for phrase in phrases):
            return name
    return "other"
