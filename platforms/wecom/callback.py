"""WeCom's callback crypto, shared by the self-built app and the smart robot (reference §3.5, §3.8).

Both use WeChat's safe-mode scheme (platforms/wechat_mp/crypto.py, reused here):
`msg_signature` = sha1(sorted(token, timestamp, nonce, encrypted)) in the query string, AES-256-CBC
with a 32-byte PKCS#7 block, and a receive id after the message. They differ in that id: the
self-built app's messages are encrypted for the CorpID, the smart robot's for the empty string
(developer.work.weixin.qq.com/document/path/101033). GET URL verification signs the encrypted
`echostr`, which must be decrypted and answered as plain text within 1 second.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from platforms.wechat_mp.crypto import DecryptError, WeChatCipher, signature, signature_ok
from proxy.errors import RequestError, VerificationError
from proxy.types import WebRequest
from proxy.verify import within_window


class CallbackCrypto:
    """Checks, opens and seals the callbacks of one WeCom app or robot."""

    def __init__(self, token: str, encoding_aes_key: str, receive_id: str, what: str) -> None:
        self._token = token
        self._cipher = WeChatCipher(encoding_aes_key, receive_id)
        self._what = what  # names the adapter in log lines (never a secret)

    def check(self, query: Mapping[str, str], encrypted: str, window: float) -> None:
        """`msg_signature` over the encrypted value, then the replay window on `timestamp`."""
        sig, ts, nonce = query.get("msg_signature", ""), query.get("timestamp", ""), query.get("nonce", "")
        if not (sig and ts and nonce and encrypted) or not signature_ok(sig, self._token, ts, nonce, encrypted):
            raise VerificationError(f"{self._what}: bad or missing msg_signature", 403)
        within_window(ts, window, what=f"{self._what}: timestamp", status=403)

    def verify(self, request: WebRequest, encrypted: Callable[[bytes], str], window: float) -> None:
        """A callback request: GET (URL verification) signs its `echostr`, POST the encrypted value
        `encrypted(body)` finds in its body (XML for the app, JSON for the robot)."""
        if request.method == "GET":
            value = request.query.get("echostr", "")
        elif request.method == "POST":
            value = encrypted(request.body)
        else:
            raise RequestError("WeCom callbacks are GET (verification) or POST", status=405)
        self.check(request.query, value, window)

    def open(self, encrypted: str) -> bytes:
        """The plaintext of a signed value; a value that does not decrypt to our receive id is refused."""
        try:
            return self._cipher.decrypt(encrypted)
        except DecryptError as e:
            raise VerificationError(f"{self._what}: cannot decrypt: {e}", 403) from None

    def seal(self, message: bytes, nonce: str) -> tuple[str, str, str]:
        """(encrypted, msg_signature, timestamp) of a passive reply signed with `nonce`."""
        ts = str(int(time.time()))
        encrypted = self._cipher.encrypt(message)
        return encrypted, signature(self._token, ts, nonce, encrypted), ts
