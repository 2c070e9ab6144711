"""Reading a signed profile back: the content a DER CMS SignedData carries, without trusting it.

A signed profile (see ``signing``) is ``ContentInfo { signedData, SignedData { version,
digestAlgorithms, encapContentInfo { data, [0] OCTET STRING <the profile> }, ... } }``
(RFC 5652 §3, §5.1, §5.2). mdmgen needs only one thing from it when it reads a tree: the embedded
bytes, to check that they are exactly the unsigned profile next to it. ``cryptography`` can make
such a structure but offers no way to take the content back out, so this is a small walker over
definite-length DER. It reads only the outer structure (no signature check: a signed file is
checked against the unsigned one it was made from; trust is the device's business) and fails
with ValueError on anything else, including BER's indefinite lengths, which ``cryptography``'s
DER output never has. Its cost is linear in the input, with no recursion.
"""

from __future__ import annotations

_SEQUENCE = 0x30
_OID = 0x06
_INTEGER = 0x02
_SET = 0x31
_OCTET_STRING = 0x04
_EXPLICIT_0 = 0xA0
_SIGNED_DATA = bytes.fromhex("2a864886f70d010702")  # 1.2.840.113549.1.7.2
_DATA = bytes.fromhex("2a864886f70d010701")  # 1.2.840.113549.1.7.1


def _element(data: bytes, at: int, tag: int, what: str) -> tuple[int, int]:
    """The (start, end) of the content of the element at ``at``, which must have ``tag``."""
    if at + 2 > len(data) or data[at] != tag:
        raise ValueError(f"not a CMS signed profile ({what} expected)")
    first = data[at + 1]
    at += 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or at + count > len(data):
            raise ValueError(f"not a DER CMS signed profile ({what}: unsupported length)")
        length = int.from_bytes(data[at:at + count], "big")
        at += count
    if at + length > len(data):
        raise ValueError(f"not a CMS signed profile ({what} is truncated)")
    return at, at + length


def embedded_content(data: bytes) -> bytes:
    """The profile bytes a DER CMS SignedData carries (attached); ValueError if it carries none."""
    start, end = _element(data, 0, _SEQUENCE, "ContentInfo")
    if end != len(data):
        raise ValueError("not a CMS signed profile (bytes after the ContentInfo)")
    oid_start, oid_end = _element(data, start, _OID, "contentType")
    if data[oid_start:oid_end] != _SIGNED_DATA:
        raise ValueError("not a CMS signed profile (the content is not signedData)")
    at, _ = _element(data, oid_end, _EXPLICIT_0, "content")
    at, _ = _element(data, at, _SEQUENCE, "SignedData")
    _, at = _element(data, at, _INTEGER, "version")
    _, at = _element(data, at, _SET, "digestAlgorithms")
    info_start, info_end = _element(data, at, _SEQUENCE, "encapContentInfo")
    oid_start, oid_end = _element(data, info_start, _OID, "eContentType")
    if data[oid_start:oid_end] != _DATA:
        raise ValueError("not a CMS signed profile (the signed content is not data)")
    if oid_end == info_end:
        raise ValueError("a detached signature: the profile is not embedded")
    at, _ = _element(data, oid_end, _EXPLICIT_0, "eContent")
    content_start, content_end = _element(data, at, _OCTET_STRING, "eContent octets")
    if content_end != info_end:
        raise ValueError("not a DER CMS signed profile (eContent is not one OCTET STRING)")
    return data[content_start:content_end]
