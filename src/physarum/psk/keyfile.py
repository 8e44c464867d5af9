"""libp2p swarm key files (``swarm.key``) and the other ways to come by a pre-shared key.

A key file is three parts, the first two of them lines::

    /key/swarm/psk/1.0.0/
    /base16/
    0f3c...(64 hex digits)

The second line names how the 32-byte key is written: ``/base16/`` (hex), ``/base64/`` or ``/bin/`` (the
raw bytes follow the second newline). This module reads all three, writes all three, and writes base16 by
default because js-libp2p reads nothing else: it takes the third line as lowercase hex whatever the second
line says.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import os
import re
import secrets
from typing import Final, Literal

from physarum.errors import PhysarumError

__all__ = [
    "KEY_FILE_HEADER",
    "PSK_SIZE",
    "KeyEncoding",
    "KeyFileError",
    "KeyFileReason",
    "format_key_file",
    "generate_psk",
    "load_key_file",
    "parse_key_file",
    "psk_from_passphrase",
    "write_key_file",
]

PSK_SIZE: Final = 32
"""Length in bytes of a pre-shared key (the XSalsa20 key)."""

KEY_FILE_HEADER: Final = b"/key/swarm/psk/1.0.0/"
"""First line of every version-1 swarm key file."""

KeyEncoding = Literal["base16", "base64", "bin"]
"""How the key is written on the third part of a key file."""

_ENCODING_LINES: Final[dict[bytes, KeyEncoding]] = {
    b"/base16/": "base16",
    b"/base64/": "base64",
    b"/bin/": "bin",
}
_HEX_KEY = re.compile(rb"[0-9a-fA-F]*")
_KEY_FILE_MODE: Final = 0o600


class KeyFileReason(enum.StrEnum):
    """Why a key file (or a key handed to this module) was refused; compare against these, not messages."""

    EMPTY = "empty"
    BAD_HEADER = "bad-header"
    UNKNOWN_ENCODING = "unknown-encoding"
    MISSING_KEY = "missing-key"
    MALFORMED_KEY = "malformed-key"
    WRONG_LENGTH = "wrong-length"
    IO = "io"


class KeyFileError(PhysarumError, ValueError):
    """A swarm key file that cannot be read, parsed or written, or a key of the wrong size.

    ``reason`` is a :class:`KeyFileReason`; ``detail`` the human explanation; ``path`` the file concerned,
    when there is one. Messages never quote key material, so they are safe to log.
    """

    def __init__(self, reason: KeyFileReason, detail: str, *, path: str | None = None) -> None:
        super().__init__(f"{path}: {detail}" if path is not None else detail)
        self.reason = reason
        self.detail = detail
        self.path = path


def parse_key_file(data: bytes) -> bytes:
    """Return the 32-byte pre-shared key held in the contents of a swarm key file.

    Line endings may be ``\\n`` or ``\\r\\n``; whitespace around the header lines and around a base16 or
    base64 key is ignored, so a trailing newline is fine. A ``/bin/`` key is the exact 32 bytes after the
    encoding line, with nothing after them. Hex digits may be of either case.

    Raises:
        KeyFileError: anything else, with ``reason`` saying what: ``EMPTY``, ``BAD_HEADER``,
            ``UNKNOWN_ENCODING``, ``MISSING_KEY``, ``MALFORMED_KEY`` (not hex, not base64) or
            ``WRONG_LENGTH``.
    """
    return _parse(bytes(data), None)


def format_key_file(psk: bytes, encoding: KeyEncoding = "base16") -> bytes:
    """Return the contents of a swarm key file holding ``psk``.

    Text encodings end with a newline; base16 is lowercase because js-libp2p decodes only that.
    ``/bin/`` files end with the 32 key bytes, since anything after them would be read as key.

    Raises:
        KeyFileError: ``WRONG_LENGTH`` if ``psk`` is not 32 bytes; ``UNKNOWN_ENCODING`` for an
            ``encoding`` other than ``"base16"``, ``"base64"`` or ``"bin"``.
    """
    _check_psk(psk)
    if encoding == "base16":
        body = psk.hex().encode("ascii") + b"\n"
    elif encoding == "base64":
        body = base64.b64encode(psk) + b"\n"
    elif encoding == "bin":
        body = bytes(psk)
    else:
        raise KeyFileError(
            KeyFileReason.UNKNOWN_ENCODING,
            f"unknown key encoding {encoding!r}; expected 'base16', 'base64' or 'bin'",
        )
    return b"%s\n/%s/\n%s" % (KEY_FILE_HEADER, encoding.encode("ascii"), body)


def load_key_file(path: str | os.PathLike[str]) -> bytes:
    """Read the swarm key file at ``path`` and return its 32-byte pre-shared key.

    Raises:
        KeyFileError: ``IO`` (the ``OSError`` is the ``__cause__``) if the file cannot be read, otherwise
            as :func:`parse_key_file`; ``path`` is set either way.
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise KeyFileError(KeyFileReason.IO, f"cannot read key file: {_os_reason(exc)}", path=name) from exc
    return _parse(data, name)


def write_key_file(
    path: str | os.PathLike[str],
    psk: bytes,
    *,
    encoding: KeyEncoding = "base16",
    overwrite: bool = False,
) -> None:
    """Write ``psk`` as a swarm key file at ``path``, readable and writable by its owner only (0600).

    The file is created with mode 0600 from the start, so the key is never readable by others, not even
    briefly. An existing file is an error unless ``overwrite`` is true; then the new file is written beside
    it and renamed over it, so readers see the old key or the new one, never half of one, and the
    replacement gets mode 0600 whatever the old file had.

    Raises:
        KeyFileError: ``IO`` (the ``OSError`` is the ``__cause__``; ``FileExistsError`` when the file
            exists and ``overwrite`` is false) or as :func:`format_key_file`.
    """
    name = os.fspath(path)
    content = format_key_file(psk, encoding)
    target = name
    if overwrite:
        directory, base = os.path.split(name)
        target = os.path.join(directory, f".{base}.{secrets.token_hex(8)}.tmp")
    try:
        _create_private(target, content)
        if overwrite:
            try:
                os.replace(target, name)
            except BaseException:
                _unlink_quietly(target)
                raise
    except OSError as exc:
        raise KeyFileError(KeyFileReason.IO, f"cannot write key file: {_os_reason(exc)}", path=name) from exc


def psk_from_passphrase(passphrase: str) -> bytes:
    """Derive a pre-shared key from a passphrase as PhysarumSM's ``-psk`` flag does: SHA3-256 of its UTF-8.

    There is no salt and no stretching (that is what PhysarumSM nodes compute), so a guessable passphrase
    gives a guessable key: prefer :func:`generate_psk` and a key file where interoperation allows. An
    empty passphrase is hashed like any other; PhysarumSM's "empty means random" rule is the CLI's business.

    Raises:
        UnicodeEncodeError: if ``passphrase`` holds lone surrogates, which UTF-8 cannot encode.
    """
    return hashlib.sha3_256(passphrase.encode("utf-8")).digest()


def generate_psk() -> bytes:
    """Return a fresh random 32-byte pre-shared key from the operating system's CSPRNG."""
    return secrets.token_bytes(PSK_SIZE)


def _parse(data: bytes, path: str | None) -> bytes:
    def fail(reason: KeyFileReason, detail: str) -> KeyFileError:
        return KeyFileError(reason, detail, path=path)

    if not data.strip():
        raise fail(KeyFileReason.EMPTY, "key file is empty")
    parts = data.split(b"\n", 2)
    header = parts[0].strip()
    if header != KEY_FILE_HEADER:
        hint = ""
        if len(header) == 2 * PSK_SIZE and _HEX_KEY.fullmatch(header):
            hint = " (this looks like a bare hex key: put '/key/swarm/psk/1.0.0/' and '/base16/' lines before it)"
        raise fail(KeyFileReason.BAD_HEADER, f"first line is not {KEY_FILE_HEADER.decode()!r}{hint}")
    if len(parts) < 2 or not parts[1].strip():
        raise fail(KeyFileReason.MISSING_KEY, "key file ends after its first line; expected an encoding line")
    encoding_line = parts[1].strip()
    encoding = _ENCODING_LINES.get(encoding_line)
    if encoding is None:
        # Only echo lines shaped like an encoding name: a file missing its encoding line has the key here.
        shown = (
            f" {encoding_line.decode('ascii')!r}"
            if encoding_line.startswith(b"/") and encoding_line.isascii() and len(encoding_line) <= 32
            else ""
        )
        raise fail(
            KeyFileReason.UNKNOWN_ENCODING,
            f"unknown key encoding{shown}; expected '/base16/', '/base64/' or '/bin/'",
        )
    body = parts[2] if len(parts) == 3 else b""

    if encoding == "bin":
        # The binary key ends the file: trailing bytes cannot be told apart from key bytes, so none are allowed.
        if not body:
            raise fail(KeyFileReason.MISSING_KEY, "key file ends before the key")
        if len(body) != PSK_SIZE:
            raise fail(KeyFileReason.WRONG_LENGTH, f"binary key is {len(body)} bytes, expected {PSK_SIZE}")
        return body

    text = body.strip()
    if not text:
        raise fail(KeyFileReason.MISSING_KEY, "key file ends before the key")
    if encoding == "base16":
        if not _HEX_KEY.fullmatch(text):
            raise fail(KeyFileReason.MALFORMED_KEY, "base16 key holds characters that are not hex digits")
        if len(text) != 2 * PSK_SIZE:
            raise fail(
                KeyFileReason.WRONG_LENGTH, f"base16 key is {len(text)} hex digits, expected {2 * PSK_SIZE}"
            )
        return binascii.unhexlify(text)

    try:
        key = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise fail(KeyFileReason.MALFORMED_KEY, f"base64 key does not decode: {exc}") from exc
    if len(key) != PSK_SIZE:
        raise fail(KeyFileReason.WRONG_LENGTH, f"base64 key decodes to {len(key)} bytes, expected {PSK_SIZE}")
    return key


def _check_psk(psk: bytes) -> None:
    if len(psk) != PSK_SIZE:
        raise KeyFileError(
            KeyFileReason.WRONG_LENGTH, f"a pre-shared key is {PSK_SIZE} bytes, got {len(psk)}"
        )


def _create_private(name: str, content: bytes) -> None:
    # O_EXCL: never write through a symlink or into a file someone else created (and may hold open).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(name, flags, _KEY_FILE_MODE)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        _unlink_quietly(name)
        raise


def _unlink_quietly(name: str) -> None:
    try:
        os.unlink(name)
    except OSError:
        pass


def _os_reason(exc: OSError) -> str:
    return exc.strerror or str(exc)
