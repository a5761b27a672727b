"""Reference policy requests as Postfix sends them (attribute order of Postfix 3.x)."""

from __future__ import annotations

from collections.abc import Mapping

# Postfix 3.12 RCPT request of a logged-in user (every attribute, empty ones included).
RCPT_AUTH: Mapping[str, str] = {
    "request": "smtpd_access_policy",
    "protocol_state": "RCPT",
    "protocol_name": "ESMTP",
    "client_address": "192.0.2.10",
    "client_name": "mail.Example.NET",
    "client_port": "53412",
    "reverse_client_name": "[Mail.Example.NET]",
    "server_address": "192.0.2.1",
    "server_port": "587",
    "helo_name": "Mail.Example.NET",
    "sender": "John.Doe+Lists@Example.COM",
    "recipient": "Jane@Example.ORG",
    "recipient_count": "0",
    "queue_id": "",
    "instance": "1a2b.5f3e7c1a.9d8e0.0",
    "size": "12345",
    "etrn_domain": "",
    "stress": "",
    "sasl_method": "PLAIN",
    "sasl_username": "John.Doe@Example.COM",
    "sasl_sender": "",
    "ccert_subject": "",
    "ccert_issuer": "",
    "ccert_fingerprint": "",
    "ccert_pubkey_fingerprint": "",
    "encryption_protocol": "TLSv1.3",
    "encryption_cipher": "TLS_AES_256_GCM_SHA384",
    "encryption_keysize": "256",
    "policy_context": "submission",
    "compatibility_level": "3.6",
    "mail_version": "3.12.0",
    "tls_sni": "smtp.example.com",
}

# END-OF-MESSAGE of an unauthenticated message with three recipients.
EOM: Mapping[str, str] = {
    "request": "smtpd_access_policy",
    "protocol_state": "END-OF-MESSAGE",
    "protocol_name": "SMTP",
    "client_address": "2001:db8::25",
    "client_name": "unknown",
    "reverse_client_name": "unknown",
    "helo_name": "[2001:db8::25]",
    "sender": "",
    "recipient": "",
    "recipient_count": "3",
    "queue_id": "4XyZ1q2w3e",
    "instance": "77.5f3e7c1a.9d8e0.0",
    "size": "2048",
    "sasl_method": "",
    "sasl_username": "",
    "sasl_sender": "",
    "encryption_protocol": "",
    "encryption_cipher": "",
    "encryption_keysize": "0",
}

MINIMAL: Mapping[str, str] = {"protocol_state": "RCPT", "sender": "a@b.com"}


def encode(attrs: Mapping[str, str]) -> bytes:
    """The request on the wire: name=value lines and an empty line."""
    return b"".join(f"{k}={v}\n".encode() for k, v in attrs.items()) + b"\n"
