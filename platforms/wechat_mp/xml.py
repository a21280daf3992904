"""WeChat's XML: parse inbound bodies safely, build passive replies.

Inbound bodies are parsed with defusedxml and any DTD is refused, so entity expansion
(billion laughs) and external entities (XXE) never run: such a body is rejected as malformed.
So is one whose XML declaration names an encoding Python cannot decode text with (expat asks
Python's codecs for any encoding it does not know itself).
"""

from __future__ import annotations

import re
import time
from xml.etree.ElementTree import ParseError

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException

# Characters XML 1.0 cannot carry at all (control characters other than tab/CR/LF, surrogates,
# U+FFFE/U+FFFF); a model's answer occasionally contains one.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class MalformedXML(ValueError):
    """The body is not the flat `<xml>…</xml>` document WeChat sends."""


def parse_fields(body: bytes) -> dict[str, str]:
    """`<xml><Name>value</Name>…</xml>` → {"Name": "value"}; nested elements are ignored."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except DefusedXmlException:
        raise MalformedXML("XML with a DTD or entities is not accepted") from None
    except LookupError:  # <?xml … encoding="bogus"?>, or a codec that is not a text encoding (hex)
        raise MalformedXML("the XML declaration names an encoding that is not a known text encoding") from None
    except (ParseError, ValueError):  # also undecodable bytes, and multi-byte encodings expat refuses
        raise MalformedXML("the body is not well-formed XML") from None
    if root.tag != "xml":
        raise MalformedXML("the root element must be <xml>")
    return {child.tag: (child.text or "") for child in root if len(child) == 0}


def cdata(text: str) -> str:
    """Wrap in CDATA; a literal `]]>` is split across two sections."""
    clean = _NOT_XML.sub("", text).replace("]]>", "]]]]><![CDATA[>")
    return f"<![CDATA[{clean}]]>"


def text_reply(to_user: str, from_user: str, content: str, now: int | None = None) -> str:
    """A passive text reply: ids swapped relative to the inbound message, CreateTime now."""
    created = int(time.time()) if now is None else now
    return (
        f"<xml><ToUserName>{cdata(to_user)}</ToUserName>"
        f"<FromUserName>{cdata(from_user)}</FromUserName>"
        f"<CreateTime>{created}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{cdata(content)}</Content></xml>"
    )


def encrypted_reply(encrypt: str, msg_signature: str, timestamp: str, nonce: str) -> str:
    """The safe-mode envelope around an encrypted passive reply."""
    return (
        f"<xml><Encrypt>{cdata(encrypt)}</Encrypt>"
        f"<MsgSignature>{cdata(msg_signature)}</MsgSignature>"
        f"<TimeStamp>{int(timestamp)}</TimeStamp><Nonce>{cdata(nonce)}</Nonce></xml>"
    )
