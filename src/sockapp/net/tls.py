"""TLS for sockapp: server options checked at start-up, mutual TLS, and a client
that says why a handshake failed.

``mtls:PORT:privateKey=KEY:certKey=CERT:caCerts=CA`` takes what Twisted's
``ssl:`` takes (``interface``, ``backlog``, ``extraCertChain``,
``dhParameters``), plus ``caCerts``: a PEM bundle file or a directory of PEM
files naming the CAs whose client certificates are accepted (files in it
that hold no certificate, a private key say, are skipped). A client without
a certificate, or with one the CAs did not sign, fails the handshake.
``ssl:`` ports, as sockapp reads them (``sockapp.net.endpoints``), are built
here too. Both check their files when the endpoint is made (one
``ValueError`` line per problem) and refuse protocol versions below TLS 1.2.

``tls_client_endpoint`` is Twisted's ``tls:`` client endpoint with the same
checks, a ``trustRoots`` that may be a bundle file, and failures named by
``tls_failure_text``.

``client_certificate(transport)`` is what a handler sees of the client's
certificate (``Context.client_certificate``).
"""

from __future__ import annotations

import datetime
import hashlib
import os
import re
import stat
import warnings
import weakref
from typing import Any, Final

from attrs import frozen
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from sockapp.wire.text import peer_text

_log = Logger()

# A certificate's text ends before the next BEGIN: with ``.+?`` alone, every BEGIN line
# without an END searched the rest of the file (8,000 such lines: 7 CPU-seconds).
PEM_CERTIFICATE: Final = re.compile(rb"-----BEGIN CERTIFICATE-----(?:[^-]|-(?!----BEGIN ))+?-----END CERTIFICATE-----")
"""One PEM certificate in a file's bytes; a file without one is refused at start-up."""
PEM_PRIVATE_KEY: Final = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----")
"""The start of a PEM private key, of any kind; a key file without one is refused."""
PEM_ENCRYPTED_KEY: Final = re.compile(rb"-----BEGIN ENCRYPTED PRIVATE KEY-----|Proc-Type: *4, *ENCRYPTED")
"""An encrypted private key, refused with a message (OpenSSL would ask for a passphrase on the terminal)."""
MAX_PEM_FILE: Final = 10 * 1024 * 1024  # bytes; a system's whole CA bundle is about 200 kB
"""The largest PEM file read, in bytes: a larger one is refused at start-up."""


@frozen
class ClientCertificate:
    """Who connected, from their TLS certificate.

    A handler gets it as `sockapp.app.Context.client_certificate` on an ``mtls:`` port.

    :ivar common_name: the subject's common name; ``None`` if it has none, or
        several (which one would be meant is ambiguous).
    :ivar dns_names: the DNS names of its subject alternative names.
    :ivar uri_names: the URIs of its subject alternative names.
    :ivar sha256_fingerprint: the SHA-256 of the DER certificate, in lowercase hex.
    """

    common_name: str | None  # None if the subject has no common name, or several (ambiguous)
    dns_names: tuple[str, ...]
    uri_names: tuple[str, ...]
    sha256_fingerprint: str  # hex, lowercase, of the DER certificate


# What each TLS transport's peer presented, read once: a handler asks at every request,
# and a certificate with thousands of names takes milliseconds to read.
_client_certificates: weakref.WeakKeyDictionary[Any, ClientCertificate] = weakref.WeakKeyDictionary()


def client_certificate(transport: Any) -> ClientCertificate | None:
    """The certificate the peer of ``transport`` presented, or None (no TLS, or none presented)."""
    try:
        known = _client_certificates.get(transport)
    except TypeError:  # not weakly referenceable: not a TLS transport
        known = None
    if known is not None:
        return known
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

    certificate = _cryptography(peer)
    names = _common_names(certificate)
    common_name = names[0] if len(names) == 1 else None  # several: ambiguous, so none to authorize by
    try:
        alternatives = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        dns_names = tuple(alternatives.get_values_for_type(x509.DNSName))
        uri_names = tuple(alternatives.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        dns_names = uri_names = ()
    fingerprint = hashlib.sha256(certificate.public_bytes(Encoding.DER)).hexdigest()
    known = ClientCertificate(
        common_name=common_name,
        dns_names=dns_names,
        uri_names=uri_names,
        sha256_fingerprint=fingerprint,
    )
    try:
        _client_certificates[transport] = known
    except TypeError:  # not weakly referenceable: asked again next time
        pass
    return known


def _common_names(certificate: Any) -> list[str]:
    """The common names in a (cryptography) certificate's subject. A name longer than X.509's
    64 characters is the peer's choice: cryptography's warning about it would be one more
    line in our log or on a client's stderr."""
    from cryptography.x509.oid import NameOID

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return [str(a.value) for a in certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]


def _read(path: str, what: str, scheme: str = "mtls:") -> bytes:
    """The bytes of a PEM file: a regular file of at most ``MAX_PEM_FILE`` bytes (a FIFO would
    hang start-up, ``/dev/zero`` fill the memory)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO without a writer: no wait
        with os.fdopen(descriptor, "rb") as f:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ValueError(f"{scheme} {what} {path} is not a regular file")
            data = f.read(MAX_PEM_FILE + 1)
    except OSError as e:
        raise ValueError(f"{scheme} cannot read {what} {path}: {e.strerror or e}") from None
    if len(data) > MAX_PEM_FILE:
        raise ValueError(f"{scheme} {what} {path} is larger than {MAX_PEM_FILE} bytes")
    return data


def load_ca_certificates(path: str, what: str = "caCerts", scheme: str = "mtls:") -> list[Any]:
    """The CA certificates in a PEM bundle file, or in the PEM files of a directory
    (files without a certificate in them, a private key say, are skipped). At least one is required.

    Twisted's own ``trustRoots=`` loader takes only a directory, reads one
    certificate per ``*.pem`` file, and fails on a key file among them: it
    catches ``OpenSSL.SSL.Error`` where ``Certificate.loadPEM`` raises
    ``OpenSSL.crypto.Error``.
    """
    from twisted.internet import ssl

    if os.path.isdir(path):
        blobs = [
            _read(os.path.join(path, name), "CA file", scheme)
            for name in sorted(os.listdir(path))
            if os.path.isfile(os.path.join(path, name))
        ]
    else:
        blobs = [_read(path, what, scheme)]
    certificates = []
    for blob in blobs:
        for pem in PEM_CERTIFICATE.findall(blob):
            try:
                certificates.append(ssl.Certificate.loadPEM(pem))
            except Exception as e:  # noqa: BLE001 - pyOpenSSL raises its own errors for bad PEM
                raise ValueError(f"{scheme} a certificate in {what}={path} does not load: {_openssl_text(e)}") from None
    if not certificates:
        raise ValueError(f"{scheme} no PEM certificate in {what}={path}")
    return certificates


def _openssl_text(error: BaseException) -> str:
    """pyOpenSSL's list of (library, function, reason) tuples as its reasons, joined."""
    parts = error.args[0] if error.args and isinstance(error.args[0], list) else []
    return (
        "; ".join(str(p[-1]) for p in parts if isinstance(p, tuple) and p and p[-1])
        or str(error)
        or type(error).__name__
    )


def _cryptography(certificate: Any) -> Any:
    """The ``cryptography`` certificate behind a Twisted ``Certificate`` or a pyOpenSSL ``X509``."""
    certificate = getattr(certificate, "original", certificate)  # twisted.internet.ssl.Certificate
    return certificate.to_cryptography() if hasattr(certificate, "to_cryptography") else certificate


def _validity_problem(certificate: Any, now: datetime.datetime | None = None) -> str | None:
    """'expired on DATE' or 'not valid before DATE' for a certificate outside its validity, else None."""
    cert = _cryptography(certificate)
    now = now or datetime.datetime.now(datetime.UTC)
    if now > cert.not_valid_after_utc:
        return f"expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
    if now < cert.not_valid_before_utc:
        return f"is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    return None


def own_certificate(certificate_path: str, key_path: str | None, scheme: str, names: tuple[str, str]) -> Any:
    """The ``PrivateCertificate`` in these files (the key may be in the certificate's file),
    checked: both load, the key is the certificate's, and the certificate is valid today.
    Each problem is a ``ValueError`` of one line naming the file; ``names`` are the
    endpoint's parameter names for the two files."""
    from twisted.internet import ssl

    cert_name, key_name = names
    cert_pem = _read(certificate_path, cert_name, scheme)
    key_pem = _read(key_path, key_name, scheme) if key_path is not None else cert_pem
    key_where = key_path if key_path is not None else certificate_path
    if not PEM_CERTIFICATE.search(cert_pem):
        raise ValueError(f"{scheme} no PEM certificate in {cert_name}={certificate_path}")
    try:
        certificate = ssl.Certificate.loadPEM(cert_pem)
    except Exception as e:  # noqa: BLE001 - OpenSSL.crypto.Error
        raise ValueError(f"{scheme} the certificate in {certificate_path} does not load: {_openssl_text(e)}") from None
    if not PEM_PRIVATE_KEY.search(key_pem):
        raise ValueError(f"{scheme} no PEM private key in {key_name}={key_where}")
    if PEM_ENCRYPTED_KEY.search(key_pem):
        # Loaded as it is, OpenSSL would ask for the passphrase on the terminal, and wait.
        raise ValueError(
            f"{scheme} the private key in {key_where} is encrypted: sockapp asks for no passphrase "
            f"(decrypt it: openssl pkey -in {key_where} -out KEY)"
        )
    try:
        key = ssl.KeyPair.load(key_pem, 1)  # FILETYPE_PEM
    except Exception as e:  # noqa: BLE001 - OpenSSL.crypto.Error (an encrypted key, say)
        raise ValueError(f"{scheme} the private key in {key_where} does not load: {_openssl_text(e)}") from None
    try:
        both = ssl.PrivateCertificate.fromCertificateAndKeyPair(certificate, key)
    except Exception:  # noqa: BLE001 - twisted.internet.error.VerifyError
        raise ValueError(
            f"{scheme} the private key in {key_where} is not the key of the certificate in {certificate_path}"
        ) from None
    problem = _validity_problem(certificate)
    if problem is not None:
        raise ValueError(f"{scheme} the certificate in {certificate_path} {problem}")
    return both


def server_tls_options(
    scheme: str,
    privateKey: str | None,
    certKey: str | None,
    caCerts: str | None = None,
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
) -> Any:
    """The ``CertificateOptions`` of a sockapp TLS server port: TLS 1.2 at least, and with
    ``caCerts`` a client certificate signed by one of them required. Every problem
    with the files is a ``ValueError`` of one line, raised at start-up."""
    from OpenSSL.SSL import Error as SSLError
    from twisted.internet import ssl
    from twisted.python.filepath import FilePath

    if privateKey is None:
        raise ValueError(f"{scheme} needs privateKey=PATH (and certKey=PATH, if the certificate is in another file)")
    server = own_certificate(
        certKey if certKey is not None else privateKey, privateKey, scheme, ("certKey", "privateKey")
    )
    chain = []
    if extraCertChain is not None:
        chain = [_cryptography(c) for c in load_ca_certificates(extraCertChain, "extraCertChain", scheme)]
    trust = None
    if caCerts is not None:
        trust = ssl.trustRootFromCertificates(load_ca_certificates(caCerts, "caCerts", scheme))
    try:
        dh = None
        if dhParameters:
            _read(dhParameters, "dhParameters", scheme)  # a missing file is one line; a bad one fails below
            dh = ssl.DiffieHellmanParameters.fromFile(FilePath(dhParameters))
        options = ssl.CertificateOptions(
            privateKey=server.privateKey.original.to_cryptography_key(),
            certificate=_cryptography(server),
            extraCertChain=chain or None,
            trustRoot=trust,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
            dhParameters=dh,
        )
        options.getContext()  # whatever OpenSSL still objects to, it objects to here, at start-up
    except SSLError as e:
        raise ValueError(f"{scheme} OpenSSL refuses these files: {_openssl_text(e)}") from None
    return options


def mtls_server_endpoint(
    reactor: Any,
    port: str,
    privateKey: str | None = None,
    certKey: str | None = None,
    caCerts: str | None = None,
    interface: str = "",
    backlog: str | int = 50,
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
) -> Any:
    """An ``SSL4ServerEndpoint`` that requires a client certificate signed by one of ``caCerts``."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    options = mtls_options(privateKey, certKey, caCerts, extraCertChain, dhParameters)
    return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)


def mtls_options(
    privateKey: str | None,
    certKey: str | None,
    caCerts: str | None,
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
) -> Any:
    """The ``CertificateOptions`` of an ``mtls:`` endpoint."""
    if caCerts is None:
        raise ValueError("mtls: needs caCerts=PATH: a PEM bundle or a directory of the client CAs' certificates")
    return server_tls_options("mtls:", privateKey, certKey, caCerts, extraCertChain, dhParameters)


def ssl_server_endpoint(
    reactor: Any,
    port: str,
    privateKey: str = "server.pem",
    certKey: str | None = None,
    sslmethod: str | None = None,
    interface: str = "",
    backlog: str | int = 50,
    extraCertChain: str | None = None,
    dhParameters: str | None = None,
) -> Any:
    """Twisted's ``ssl:`` server endpoint, built from the same parameters with sockapp's
    checks: one-line errors for the files, an expired certificate refused, TLS 1.2 at least."""
    from twisted.internet.endpoints import SSL4ServerEndpoint

    if sslmethod is not None:
        raise ValueError("ssl: sockapp does not take sslmethod=: it serves TLS 1.2 and 1.3, whatever the client offers")
    options = server_tls_options("ssl:", privateKey, certKey, None, extraCertChain, dhParameters)
    return SSL4ServerEndpoint(reactor, int(port), options, backlog=int(backlog), interface=interface)


# Why a TLS handshake failed, in a fixed vocabulary (it labels a metric): OpenSSL's
# words for each, as they appear in the error it reports.
HANDSHAKE_FAILURES: Final = ("no-certificate", "certificate-refused", "protocol-version", "not-tls", "other")
"""Why a TLS handshake failed, in the fixed words that label ``sockapp_tls_handshake_failures_total``."""
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


def note_handshake_failure(log: Any, peer: str, transport: Any, reason: Any, metrics: Any) -> None:
    """At a server connection's end: if its TLS handshake failed (an mtls: port refusing a
    client), one log line with the peer and why, and the count in ``metrics`` (if any)."""
    failed = handshake_failure(transport, reason)
    if failed is None:
        return
    log.warn(
        "{peer}: TLS handshake failed: {why} ({detail})", peer=peer, why=failed, detail=peer_text(reason.value, 200)
    )
    if metrics is not None:
        metrics.tls_handshake_failed(failed)


# The client side: Twisted's ``tls:`` endpoint, rebuilt so that its files are
# checked when the endpoint is made and a refused handshake says why.

NAME_TEXT_LIMIT: Final = 120  # characters of a certificate's names quoted in a message
"""At most this many characters of a certificate's names are quoted in a message."""
_UNKNOWN_ISSUER: Final = frozenset({2, 18, 19, 20, 21})  # X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT and kin
_CERT_NOT_YET_VALID: Final = 9
_CERT_HAS_EXPIRED: Final = 10
_INVALID_PURPOSE: Final = 26

# Why verification failed on a client connection, by its TLS protocol (the
# transport its AppClient sees), for as long as that protocol exists.
_verification_failures: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _names(certificate: Any) -> str:
    """The host names and addresses a certificate is for (or its common name)."""
    from cryptography import x509

    cert = _cryptography(certificate)
    try:
        alternatives = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        names = [str(n) for n in alternatives.get_values_for_type(x509.DNSName)]
        names += [str(a) for a in alternatives.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        names = _common_names(cert)
    return peer_text(", ".join(names) or "no host at all", NAME_TEXT_LIMIT)  # the server's words: escaped, cut


def _subject(certificate: Any) -> str:
    return peer_text(_distinguished_name(certificate, "subject") or "an empty subject", NAME_TEXT_LIMIT)


def _distinguished_name(certificate: Any, which: str) -> str:
    """A certificate's ``subject`` or ``issuer`` as RFC 4514 text, without cryptography's
    warning about a name over 64 characters (the peer picks it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return str(getattr(_cryptography(certificate), which).rfc4514_string())


@implementer(IOpenSSLClientConnectionCreator)
class CheckedClientTLS:
    """What Twisted's ``optionsForClientTLS`` does (the server's chain checked against
    the trust roots, its names against the host), remembering for each connection
    why a check failed, so that the error names the cause (``tls_failure_text``).

    :ivar hostname: the host the server's certificate must name.
    :ivar trusted: where the trust roots came from, for messages.
    """

    def __init__(self, hostname: str, options: Any, trusted: str) -> None:
        from twisted.internet.abstract import isIPAddress, isIPv6Address

        self.hostname = hostname
        self.trusted = trusted  # where the trust roots came from, for messages
        self._context = options.getContext()
        self._is_address = isIPAddress(hostname) or isIPv6Address(hostname)
        self._server_name = None if self._is_address else _idna(hostname)

    def clientConnectionForTLS(self, tlsProtocol: Any) -> Any:
        """An OpenSSL connection for ``tlsProtocol`` that sends the host name (SNI) and checks the server."""
        from OpenSSL import SSL

        connection = SSL.Connection(self._context)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        connection.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, self._verifier(tlsProtocol))
        return connection

    def _verifier(self, tls_protocol: Any) -> Any:
        protocol_ref = weakref.ref(tls_protocol)  # OpenSSL holds the callback; it must not hold the protocol

        def verify(connection: Any, certificate: Any, error: int, depth: int, ok: int) -> bool:
            try:
                protocol = protocol_ref()
                if not ok:
                    if protocol is not None and protocol not in _verification_failures:
                        _verification_failures[protocol] = self._chain_problem(certificate, error, depth)
                    return False
                if depth != 0:
                    return True
                problem = self._name_problem(certificate)
                if problem is None:
                    return True
                if protocol is not None:
                    _verification_failures[protocol] = problem
                    protocol.failVerification(Failure(ValueError(problem)))
                return False
            except BaseException:  # noqa: BLE001 - an exception escaping an OpenSSL callback is lost, or worse
                _log.failure("while verifying the server's certificate")
                return False

        return verify

    def _name_problem(self, certificate: Any) -> str | None:
        from service_identity import CertificateError, VerificationError
        from service_identity.cryptography import verify_certificate_hostname, verify_certificate_ip_address

        cert = _cryptography(certificate)
        try:
            if self._is_address:
                verify_certificate_ip_address(cert, self.hostname)
            else:
                verify_certificate_hostname(cert, self.hostname)
        except (VerificationError, CertificateError):
            return f"the server's certificate is for {_names(cert)}, not {self.hostname}"
        return None

    def _chain_problem(self, certificate: Any, error: int, depth: int) -> str:
        whose = (
            "the server's certificate"
            if depth == 0
            else f"a CA certificate in the server's chain ({_subject(certificate)})"
        )
        if error in (_CERT_HAS_EXPIRED, _CERT_NOT_YET_VALID):
            return f"{whose} {_validity_problem(certificate) or 'is outside its validity dates'}"
        if error in _UNKNOWN_ISSUER:
            issuer = peer_text(_distinguished_name(certificate, "issuer"), NAME_TEXT_LIMIT)
            return f"{whose} is signed by a CA ({issuer}) not in {self.trusted}"
        if error == _INVALID_PURPOSE:
            return f"{whose} is not for use by a server"
        return f"{whose} is refused (OpenSSL verify error {error})"


def _idna(hostname: str) -> bytes:
    try:
        import idna

        return bytes(idna.encode(hostname))
    except Exception:  # noqa: BLE001 - not a name idna takes: leave it to the handshake
        return hostname.encode("ascii", "replace")


def tls_client_endpoint(
    reactor: Any,
    host: str,
    port: str,
    timeout: str = "30",
    bindAddress: str | None = None,
    certificate: str | None = None,
    privateKey: str | None = None,
    trustRoots: str | None = None,
    endpoint: str | None = None,
    **unknown: str,
) -> Any:
    """Twisted's ``tls:`` client endpoint from the same parameters, except that
    ``trustRoots`` may be a PEM bundle file (as ``curl --cacert`` takes) or a
    directory with other files in it, every file is checked now (one-line
    ``ValueError``), and a refused handshake says why (``tls_failure_text``)."""
    from twisted.internet import ssl
    from twisted.internet.endpoints import HostnameEndpoint, wrapClientTLS

    if unknown:
        raise ValueError(
            f"tls: unknown parameter {', '.join(sorted(unknown))} "
            "(it takes timeout, bindAddress, certificate, privateKey, trustRoots, endpoint)"
        )
    if privateKey is not None and certificate is None:
        raise ValueError("tls: privateKey= needs certificate= (the client certificate) too")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"tls: {port!r} is not a port number")
    if not timeout.isdigit():
        raise ValueError(f"tls: timeout={timeout!r} is not a whole number of seconds")
    extra = {}
    if certificate is not None:
        mine = own_certificate(certificate, privateKey, "tls:", ("certificate", "privateKey"))
        extra = {"privateKey": mine.privateKey.original.to_cryptography_key(), "certificate": _cryptography(mine)}
    if trustRoots is not None:
        trust = ssl.trustRootFromCertificates(load_ca_certificates(trustRoots, "trustRoots", "tls:"))
        trusted = f"trustRoots={trustRoots}"
    else:
        trust = ssl.platformTrust()
        trusted = "this system's trusted CAs (give trustRoots=PATH for a private CA)"
    options = ssl.CertificateOptions(trustRoot=trust, raiseMinimumTo=ssl.TLSVersion.TLSv1_2, **extra)
    if endpoint is not None:
        from sockapp.net.endpoints import client_endpoint

        inner = client_endpoint(reactor, endpoint)
    else:
        inner = HostnameEndpoint(
            reactor, host, int(port), int(timeout), None if bindAddress is None else (bindAddress, 0)
        )
    return wrapClientTLS(CheckedClientTLS(host, options, trusted), inner)


# What a client is told when its TLS connection fails: OpenSSL's words, then ours.
_CLIENT_TLS_WORDS: Final = (
    (
        ("alert certificate required",),
        "the server requires a client certificate: add certificate=CERT:privateKey=KEY to the tls: endpoint",
    ),
    (("alert unknown ca",), "the server refused our client certificate: it does not accept the CA that signed it"),
    (("alert certificate expired",), "the server refused our client certificate: it has expired"),
    (
        ("alert unsupported certificate",),
        "the server refused our client certificate: it is not for client use (its extended key usage)",
    ),
    (
        ("alert bad certificate", "alert certificate unknown", "alert certificate revoked"),
        "the server refused our client certificate",
    ),
    (
        ("alert handshake failure",),
        "the server refused the handshake (under TLS 1.2 this is also how a server asks for a client certificate)",
    ),
    (
        ("alert protocol version", "unsupported protocol", "no protocols available"),
        "no TLS version in common with the server (sockapp speaks TLS 1.2 and 1.3)",
    ),
    (
        (
            "wrong version number",
            "packet length too long",
            "record layer failure",
            "unknown protocol",
            "http request",
            "record too long",
        ),
        "the server does not speak TLS: it answered the TLS greeting with something else",
    ),
)


def tls_failure_text(transport: Any, error: BaseException | None) -> str | None:
    """Why the TLS connection behind ``transport`` failed, in one line, or None if
    ``error`` is not a TLS failure (the caller says what it is)."""
    known = _verification_failures.get(transport) if transport is not None else None
    if known is not None:
        return f"TLS: {known}"
    if error is None:
        return None
    module = type(error).__module__
    if module.startswith("service_identity"):
        return "TLS: the server's certificate is not valid for the host asked for"
    if not module.startswith("OpenSSL"):
        return None
    text = _openssl_text(error)
    words = text.lower()
    for phrases, meaning in _CLIENT_TLS_WORDS:
        if any(phrase in words for phrase in phrases):
            return f"TLS: {meaning}"
    return f"TLS handshake failed: {text}"


def handshake_unfinished(transport: Any) -> bool:
    """True if ``transport`` is TLS whose handshake has not completed (a plain one: False)."""
    return getattr(transport, "_handshakeDone", True) is False  # TLSMemoryBIOProtocol's own flag
