"""libp2p private networks (pnet): pre-shared keys, swarm key files and the XSalsa20 connection protector.

Typical use::

    psk = load_key_file("swarm.key")          # or psk_from_passphrase(...), generate_psk()
    stream = await protect(tcp_stream, psk)   # then multistream-select on `stream`

A wrong key is not detected here (pnet has no MAC): the layer above reads garbage and raises
:class:`PskMismatchError`.
"""

from physarum.psk.keyfile import (
    KEY_FILE_HEADER,
    PSK_SIZE,
    KeyEncoding,
    KeyFileError,
    KeyFileReason,
    format_key_file,
    generate_psk,
    load_key_file,
    parse_key_file,
    psk_from_passphrase,
    write_key_file,
)
from physarum.psk.protector import (
    NONCE_SIZE,
    HalfCloseablePskStream,
    PskMismatchError,
    PskStream,
    TruncatedNonceError,
    protect,
)
from physarum.psk.xsalsa20 import XSalsa20, hsalsa20

__all__ = [
    "KEY_FILE_HEADER",
    "NONCE_SIZE",
    "PSK_SIZE",
    "HalfCloseablePskStream",
    "KeyEncoding",
    "KeyFileError",
    "KeyFileReason",
    "PskMismatchError",
    "PskStream",
    "TruncatedNonceError",
    "XSalsa20",
    "format_key_file",
    "generate_psk",
    "hsalsa20",
    "load_key_file",
    "parse_key_file",
    "protect",
    "psk_from_passphrase",
    "write_key_file",
]
