"""WeChat Official Account signatures and safe-mode (消息加解密) encryption.

Quirks worth knowing (see the shared reference, section 3.5):
- signatures are SHA-1 over the *string-sorted* values joined without a separator;
- AESKey = base64(EncodingAESKey + "="), 32 bytes (AES-256), and the CBC IV is AESKey[:16];
- PKCS#7 padding uses a 32-byte block (pad values 1..32), not AES's 16;
- the plaintext is random(16) || len(msg) as 4-byte big-endian || msg || AppID, and the
  trailing AppID must be ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import struct

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

PAD_BITS = 256  # PKCS#7 with a 32-byte block


class DecryptError(ValueError):
    """A safe-mode payload could not be decrypted or is not addressed to our AppID."""


def signature(*values: str) -> str:
    """hex(SHA1(join(sorted(values)))) — the GET/POST `signature` and the `msg_signature`."""
    return hashlib.sha1("".join(sorted(values)).encode("utf-8")).hexdigest()


def signature_ok(given: str, *values: str) -> bool:
    return hmac.compare_digest(signature(*values).encode(), given.encode("utf-8", "replace"))


def aes_key(encoding_aes_key: str) -> bytes:
    """The 32-byte AES key from the 43-character EncodingAESKey; ValueError if it is not one."""
    try:
        key = base64.b64decode(encoding_aes_key + "=", validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("encoding_aes_key is not base64 (43 characters expected)") from None
    if len(key) != 32:
        raise ValueError("encoding_aes_key must decode to 32 bytes (43 characters expected)")
    return key


class WeChatCipher:
    """AES-256-CBC as WeChat uses it for one account (key + AppID)."""

    def __init__(self, encoding_aes_key: str, app_id: str) -> None:
        self._key = aes_key(encoding_aes_key)
        self._app_id = app_id.encode("utf-8")

    def _cipher(self) -> Cipher[modes.CBC]:
        return Cipher(algorithms.AES(self._key), modes.CBC(self._key[:16]))

    def encrypt(self, message: bytes, random16: bytes | None = None) -> str:
        """base64 ciphertext of `message`, as the `Encrypt` element carries it."""
        prefix = random16 if random16 is not None else os.urandom(16)
        plain = prefix + struct.pack(">I", len(message)) + message + self._app_id
        padder = padding.PKCS7(PAD_BITS).padder()
        padded = padder.update(plain) + padder.finalize()
        enc = self._cipher().encryptor()
        return base64.b64encode(enc.update(padded) + enc.finalize()).decode("ascii")

    def decrypt(self, encrypted: str) -> bytes:
        """The message inside an `Encrypt` value; DecryptError on any defect."""
        try:
            data = base64.b64decode(encrypted, validate=True)
        except (binascii.Error, ValueError):
            raise DecryptError("Encrypt is not base64") from None
        if not data or len(data) % 16:
            raise DecryptError("ciphertext length is not a multiple of the AES block")
        dec = self._cipher().decryptor()
        padded = dec.update(data) + dec.finalize()
        unpadder = padding.PKCS7(PAD_BITS).unpadder()
        try:  # checks the pad value is 1..32 and every pad byte equals it
            plain = unpadder.update(padded) + unpadder.finalize()
        except ValueError:
            raise DecryptError("bad padding (wrong key?)") from None
        if len(plain) < 20:
            raise DecryptError("plaintext too short")
        (length,) = struct.unpack(">I", plain[16:20])
        if length > len(plain) - 20:
            raise DecryptError("length field exceeds the plaintext")
        message, app_id = plain[20 : 20 + length], plain[20 + length :]
        if not hmac.compare_digest(app_id, self._app_id):
            raise DecryptError("the message is addressed to another AppID")
        return message
