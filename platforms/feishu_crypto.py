"""Feishu/Lark event crypto (reference: shared/reference/platforms.md §4.3–4.4).

- decryption: key = SHA-256(encrypt_key); payload = base64 → IV (16 bytes) || AES-256-CBC
  ciphertext, PKCS#7 (16-byte blocks);
- signature: hex SHA-256 of `timestamp + nonce + encrypt_key` followed by the raw body bytes (a
  plain hash, not an HMAC), over the body as received (the encrypted JSON when encryption is on).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes


class DecryptError(ValueError):
    pass


def _key(encrypt_key: str) -> bytes:
    return hashlib.sha256(encrypt_key.encode()).digest()


def decrypt(encrypt_key: str, encrypted: str) -> bytes:
    try:
        raw = base64.b64decode(encrypted, validate=True)
    except (binascii.Error, ValueError):
        raise DecryptError("not base64") from None
    if len(raw) < 32 or len(raw) % 16:
        raise DecryptError("ciphertext has a wrong length")
    decryptor = Cipher(algorithms.AES(_key(encrypt_key)), modes.CBC(raw[:16])).decryptor()
    padded = decryptor.update(raw[16:]) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        raise DecryptError("bad padding (wrong key?)") from None


def encrypt(encrypt_key: str, plaintext: bytes) -> str:
    """The inverse of `decrypt` (what Feishu does), used by tests and tools."""
    padder = padding.PKCS7(128).padder()
    data = padder.update(plaintext) + padder.finalize()
    iv = os.urandom(16)
    encryptor = Cipher(algorithms.AES(_key(encrypt_key)), modes.CBC(iv)).encryptor()
    return base64.b64encode(iv + encryptor.update(data) + encryptor.finalize()).decode()


def signature(timestamp: str, nonce: str, encrypt_key: str, body: bytes) -> str:
    return hashlib.sha256((timestamp + nonce + encrypt_key).encode() + body).hexdigest()
