"""XSalsa20, the stream cipher of libp2p private networks, as a stateful keystream.

XSalsa20(key, nonce) is Salsa20 keyed with HSalsa20(key, nonce[:16]) and given nonce[16:24]. HSalsa20
runs once per connection, so it is plain Python here; the keystream, which every byte of traffic goes
through, comes from pycryptodome's C Salsa20.
"""

from __future__ import annotations

import struct
from typing import Final

from physarum.errors import ConfigError

__all__ = ["KEY_SIZE", "NONCE_SIZE", "XSalsa20", "hsalsa20", "preload"]

KEY_SIZE: Final = 32
NONCE_SIZE: Final = 24

_MASK: Final = 0xFFFFFFFF
# "expand 32-byte k" as four little-endian words.
_SIGMA: Final = (0x61707865, 0x3320646E, 0x79622D32, 0x6B206574)
# The four quarter-rounds of a column round, then of a row round, on Salsa20's 4x4 word state.
_DOUBLE_ROUND: Final = (
    (0, 4, 8, 12),
    (5, 9, 13, 1),
    (10, 14, 2, 6),
    (15, 3, 7, 11),
    (0, 1, 2, 3),
    (5, 6, 7, 4),
    (10, 11, 8, 9),
    (15, 12, 13, 14),
)


def hsalsa20(key: bytes, nonce: bytes) -> bytes:
    """Return HSalsa20(key, nonce): the 32-byte subkey XSalsa20 derives from a key and a 16-byte nonce.

    Raises:
        ConfigError: if ``key`` is not 32 bytes or ``nonce`` not 16.
    """
    if len(key) != KEY_SIZE:
        raise ConfigError(f"HSalsa20 key must be {KEY_SIZE} bytes, got {len(key)}")
    if len(nonce) != 16:
        raise ConfigError(f"HSalsa20 nonce must be 16 bytes, got {len(nonce)}")
    k = struct.unpack("<8I", key)
    n = struct.unpack("<4I", nonce)
    x = [
        _SIGMA[0], k[0], k[1], k[2],
        k[3], _SIGMA[1], n[0], n[1],
        n[2], n[3], _SIGMA[2], k[4],
        k[5], k[6], k[7], _SIGMA[3],
    ]  # fmt: skip
    for _ in range(10):
        for a, b, c, d in _DOUBLE_ROUND:
            t = (x[a] + x[d]) & _MASK
            x[b] ^= ((t << 7) | (t >> 25)) & _MASK
            t = (x[b] + x[a]) & _MASK
            x[c] ^= ((t << 9) | (t >> 23)) & _MASK
            t = (x[c] + x[b]) & _MASK
            x[d] ^= ((t << 13) | (t >> 19)) & _MASK
            t = (x[d] + x[c]) & _MASK
            x[a] ^= ((t << 18) | (t >> 14)) & _MASK
    # HSalsa20 skips Salsa20's final addition of the input and outputs the words in the constant and nonce
    # positions: those inputs are public, so adding them back in would hide nothing.
    return struct.pack("<8I", x[0], x[5], x[10], x[15], x[6], x[7], x[8], x[9])


_SMALL: Final = 256
# Keystream made ahead, kept per direction for a connection's life: 256 bytes, not more, as a node
# may hold a thousand idle connections (4 KiB cost 8 KiB per connection, ~15% of its memory; 1 KiB
# still 2 KiB). A ping (about 60 bytes each way) costs 0.15 us more than with 1 KiB.
_ZEROS: Final = bytes(_SMALL)


class XSalsa20:
    """An XSalsa20 keystream, XORed into successive data: ``process`` both encrypts and decrypts.

    State carries across calls, so any split of the data gives the same output as a single call. One
    instance serves one direction of one connection; a (key, nonce) pair must never encrypt twice.
    """

    __slots__ = ("_cipher", "_ks", "_pos")

    def __init__(self, key: bytes, nonce: bytes) -> None:
        """Start the keystream at its first byte.

        Raises:
            ConfigError: if ``key`` is not 32 bytes or ``nonce`` not 24.
        """
        if len(nonce) != NONCE_SIZE:
            raise ConfigError(f"XSalsa20 nonce must be {NONCE_SIZE} bytes, got {len(nonce)}")
        nonce = bytes(nonce)
        # Imported here: pycryptodome's loader costs ~30 ms, which hosts without a PSK never pay.
        from Crypto.Cipher import Salsa20

        self._cipher = Salsa20.new(key=hsalsa20(key, nonce[:16]), nonce=nonce[16:])
        # Keystream generated ahead for small messages: pycryptodome costs ~3 us a call whatever the
        # size, an int XOR on a slice of ready keystream well under 1 us, and pings are small.
        self._ks = b""
        self._pos = 0

    def process(self, data: bytes | bytearray | memoryview) -> bytes:
        """Return ``data`` XORed with the next ``len(data)`` keystream bytes, and move past them.

        Raises:
            OverflowError: once 2**70 bytes have gone through (pycryptodome's ``MessageTooLongError``);
                no connection lives that long.
        """
        n = len(data)
        pos = self._pos
        ks = self._ks
        if n <= _SMALL or n <= len(ks) - pos:
            if len(ks) - pos < n:
                ks = self._ks = ks[pos:] + self._cipher.encrypt(_ZEROS)
                pos = 0
            self._pos = pos + n
            return (int.from_bytes(data, "little") ^ int.from_bytes(ks[pos : pos + n], "little")).to_bytes(
                n, "little"
            )
        ahead = len(ks) - pos
        if not ahead:
            return self._cipher.encrypt(data)
        # Use up the keystream made ahead so the cipher's own position lines up with the data again.
        self._ks = b""
        self._pos = 0
        view = memoryview(data)
        head = (int.from_bytes(view[:ahead], "little") ^ int.from_bytes(ks[pos:], "little")).to_bytes(
            ahead, "little"
        )
        return head + self._cipher.encrypt(view[ahead:])


def preload() -> None:
    """Load pycryptodome's Salsa20 now (its module, cffi and the C declarations cffi parses: some
    thousands of long-lived objects). A host with a PSK calls it before it listens: loaded by the
    first connection instead, under a flood of them, those objects land among the connections'
    short-lived memory and keep its pages from going back to the system after the crowd left
    (+20 MiB RSS retained after 1,200 fresh identities, issue 11)."""
    XSalsa20(bytes(KEY_SIZE), bytes(NONCE_SIZE)).process(b"\0")
