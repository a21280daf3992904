"""Feishu/Lark event crypto (reference: shared/reference/platforms.md §4.3–4.4).

- decryption: key = SHA-256(encrypt_key); payload = base64 → IV (16 bytes) || AES-256-CBC
  ciphertext, PKCS#7 over 16-byte blocks; short, misaligned or badly padded input is rejected;
- signature: lowercase hex SHA-256 of `timestamp + nonce + encrypt_key` followed by the raw body
  bytes (a plain hash, not an HMAC), over the body as received (the encrypted JSON).
"""

from __future__ import annotations

import base64
import binascii
import hashlib

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = 16


class DecryptError(ValueError):
    """The `encrypt` field cannot be decrypted with our key (wrong key, truncated, not base64)."""


def decrypt(encrypt_key: str, encrypted: str) -> bytes:
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptError("not base64") from None
    if len(raw) < 2 * BLOCK or len(raw) % BLOCK:
        raise DecryptError("ciphertext has a wrong length")
    key = hashlib.sha256(encrypt_key.encode()).digest()
    decryptor = Cipher(algorithms.AES(key), modes.CBC(raw[:BLOCK])).decryptor()
    padded = decryptor.update(raw[BLOCK:]) + decryptor.finalize()
    unpadder = padding.PKCS7(BLOCK * 8).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptError("bad padding (wrong key?)") from None


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()
