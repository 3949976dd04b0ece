"""Encryption at rest for provider keys configured through the API.

The master key comes from `EVERRUNS_MASTER_KEY` (a Fernet key:
`python -c "from cryptography.fernet import Fernet; print(Fernet.generate_key().decode())"`).
"""

from __future__ import annotations

from cryptography.fernet import Fernet, InvalidToken

from everruns.engine.hardening import getenv
from everruns.errors import EverrunsError


class SecretsUnavailable(EverrunsError):
    """No usable master key: secrets cannot be stored or read."""


def _fernet() -> Fernet:
    key = getenv("EVERRUNS_MASTER_KEY")
    if not key:
        raise SecretsUnavailable("EVERRUNS_MASTER_KEY is not set: cannot store or read secrets")
    try:
        return Fernet(key.encode())
    except ValueError:
        raise SecretsUnavailable("EVERRUNS_MASTER_KEY is not a valid Fernet key") from None


def encrypt(plaintext: str) -> str:
    return _fernet().encrypt(plaintext.encode()).decode()


def decrypt(ciphertext: str) -> str:
    try:
        return _fernet().decrypt(ciphertext.encode()).decode()
    except InvalidToken:
        raise SecretsUnavailable(
            "a stored secret cannot be decrypted with this master key"
        ) from None
