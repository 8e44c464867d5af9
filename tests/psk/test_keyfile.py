"""Swarm key files: parsing every encoding, refusing everything else, writing them privately."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from physarum.errors import PhysarumError
from physarum.psk import keyfile
from physarum.psk.keyfile import PSK_SIZE, KeyEncoding, KeyFileError, KeyFileReason

# The example key from js-libp2p's pnet README.
README_HEX = "dffb7e3135399a8b1612b2aaca1c36a3a8ac2cd0cca51ceeb2ced87d308cac6d"
README_KEY = bytes.fromhex(README_HEX)
HEADER = b"/key/swarm/psk/1.0.0/\n"

psks = st.binary(min_size=PSK_SIZE, max_size=PSK_SIZE)
encodings = st.sampled_from(["base16", "base64", "bin"])


def refused(data: bytes, reason: KeyFileReason) -> KeyFileError:
    with pytest.raises(KeyFileError) as info:
        keyfile.parse_key_file(data)
    assert info.value.reason is reason, info.value
    return info.value


# --- parsing ---------------------------------------------------------------------------------------


def test_parses_go_ipfs_swarm_key_gen_output() -> None:
    # ipfs-swarm-key-gen and js-libp2p's generateKey write no newline after the key.
    assert keyfile.parse_key_file(HEADER + b"/base16/\n" + README_HEX.encode()) == README_KEY


@pytest.mark.parametrize(
    "data",
    [
        HEADER + b"/base16/\n" + README_HEX.encode() + b"\n",
        HEADER + b"/base16/\n" + README_HEX.upper().encode() + b"\n",
        b"/key/swarm/psk/1.0.0/\r\n/base16/\r\n" + README_HEX.encode() + b"\r\n",
        b"  /key/swarm/psk/1.0.0/ \n\t/base16/  \n   " + README_HEX.encode() + b" \n\n",
        HEADER + b"/base64/\n" + base64.b64encode(README_KEY) + b"\n",
        b"/key/swarm/psk/1.0.0/\r\n/base64/\r\n " + base64.b64encode(README_KEY) + b"\r\n",
        HEADER + b"/bin/\n" + README_KEY,
        b"/key/swarm/psk/1.0.0/\r\n/bin/\r\n" + README_KEY,
    ],
)
def test_parses_every_encoding_and_line_ending(data: bytes) -> None:
    assert keyfile.parse_key_file(data) == README_KEY


def test_binary_key_may_contain_newlines_and_whitespace() -> None:
    key = b"\n\r \t" * 8
    assert keyfile.parse_key_file(HEADER + b"/bin/\n" + key) == key


@given(psks, encodings)
def test_round_trip(psk: bytes, encoding: KeyEncoding) -> None:
    assert keyfile.parse_key_file(keyfile.format_key_file(psk, encoding)) == psk


@given(psks, encodings, st.data())
def test_every_truncation_is_refused(psk: bytes, encoding: KeyEncoding, data: st.DataObject) -> None:
    text = keyfile.format_key_file(psk, encoding)
    # A text key's trailing newline is optional; any cut before the key's last character must fail.
    essential = len(text.rstrip(b"\n")) if encoding != "bin" else len(text)
    cut = data.draw(st.integers(0, essential - 1))
    with pytest.raises(KeyFileError):
        keyfile.parse_key_file(text[:cut])


def test_empty_files() -> None:
    refused(b"", KeyFileReason.EMPTY)
    refused(b" \r\n\t\n", KeyFileReason.EMPTY)


@pytest.mark.parametrize(
    "first_line",
    [b"/key/swarm/psk/2.0.0/", b"/key/swarm/psk/1.0.0", b"key/swarm/psk/1.0.0/", b"/base16/", b"\xff\xfe"],
)
def test_wrong_header(first_line: bytes) -> None:
    refused(first_line + b"\n/base16/\n" + README_HEX.encode(), KeyFileReason.BAD_HEADER)


def test_bare_hex_key_gets_a_hint_and_is_not_echoed() -> None:
    err = refused(README_HEX.encode() + b"\n", KeyFileReason.BAD_HEADER)
    assert "bare hex key" in err.detail
    assert README_HEX not in str(err)


@pytest.mark.parametrize("line", [b"/base32/", b"base16", b"/BASE16/", b"/hex/"])
def test_unknown_encoding(line: bytes) -> None:
    err = refused(HEADER + line + b"\n" + README_HEX.encode(), KeyFileReason.UNKNOWN_ENCODING)
    if line.startswith(b"/"):
        assert line.decode() in str(err)


def test_missing_encoding_line_does_not_echo_the_key() -> None:
    err = refused(HEADER + README_HEX.encode() + b"\n", KeyFileReason.UNKNOWN_ENCODING)
    assert README_HEX not in str(err)


@pytest.mark.parametrize(
    "data",
    [
        b"/key/swarm/psk/1.0.0/",
        HEADER,
        HEADER + b"\n",
        HEADER + b"/base16/",
        HEADER + b"/base16/\n",
        HEADER + b"/base16/\n \r\n",
        HEADER + b"/base64/\n",
        HEADER + b"/bin/",
        HEADER + b"/bin/\n",
    ],
)
def test_missing_key(data: bytes) -> None:
    refused(data, KeyFileReason.MISSING_KEY)


@pytest.mark.parametrize(
    "key_text",
    [
        "g" + README_HEX[1:],
        README_HEX[:32] + " " + README_HEX[32:],
        README_HEX + "\nextra line",
        "0x" + README_HEX[2:],
        README_HEX[:-1] + "\u00e9",
    ],
)
def test_non_hex_base16(key_text: str) -> None:
    err = refused(HEADER + b"/base16/\n" + key_text.encode(), KeyFileReason.MALFORMED_KEY)
    assert README_HEX[8:40] not in str(err)


@pytest.mark.parametrize("digits", [1, 2, 62, 63, 65, 66, 128])
def test_wrong_length_base16(digits: int) -> None:
    text = (README_HEX * 3)[:digits].encode()
    err = refused(HEADER + b"/base16/\n" + text, KeyFileReason.WRONG_LENGTH)
    assert str(digits) in err.detail


@pytest.mark.parametrize("size", [16, 31, 33, 64])
def test_wrong_length_base64(size: int) -> None:
    refused(HEADER + b"/base64/\n" + base64.b64encode(bytes(size)), KeyFileReason.WRONG_LENGTH)


@pytest.mark.parametrize(
    "text",
    [
        base64.b64encode(README_KEY).rstrip(b"="),  # unpadded
        base64.urlsafe_b64encode(b"\xff" * 32),  # '-' and '_' are not standard base64
        b"!!!!" + base64.b64encode(README_KEY)[4:],
        base64.b64encode(README_KEY)[:20] + b"\n" + base64.b64encode(README_KEY)[20:],
    ],
)
def test_malformed_base64(text: bytes) -> None:
    refused(HEADER + b"/base64/\n" + text, KeyFileReason.MALFORMED_KEY)


@pytest.mark.parametrize(
    "body", [bytes(31), bytes(33), README_KEY + b"\n", README_KEY + b"\r\n", b" " + README_KEY]
)
def test_binary_key_must_be_exactly_32_bytes(body: bytes) -> None:
    refused(HEADER + b"/bin/\n" + body, KeyFileReason.WRONG_LENGTH)


def test_error_is_a_value_error_and_a_physarum_error() -> None:
    err = refused(b"", KeyFileReason.EMPTY)
    assert isinstance(err, ValueError)
    assert isinstance(err, PhysarumError)
    assert err.path is None


# --- formatting ------------------------------------------------------------------------------------


def test_format_base16_is_lowercase_and_js_readable() -> None:
    key = bytes(range(0xE0, 0x100))
    text = keyfile.format_key_file(key)
    assert text == HEADER + b"/base16/\n" + key.hex().encode() + b"\n"
    # js-libp2p splits on newlines and decodes the third line as lowercase hex.
    assert text.decode().splitlines()[2] == key.hex()


def test_format_other_encodings() -> None:
    assert (
        keyfile.format_key_file(README_KEY, "base64")
        == HEADER + b"/base64/\n" + base64.b64encode(README_KEY) + b"\n"
    )
    assert keyfile.format_key_file(README_KEY, "bin") == HEADER + b"/bin/\n" + README_KEY


def test_format_refuses_bad_arguments() -> None:
    with pytest.raises(KeyFileError) as info:
        keyfile.format_key_file(bytes(31))
    assert info.value.reason is KeyFileReason.WRONG_LENGTH
    with pytest.raises(KeyFileError) as info:
        keyfile.format_key_file(README_KEY, "base32")  # type: ignore[arg-type]
    assert info.value.reason is KeyFileReason.UNKNOWN_ENCODING


# --- files -----------------------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    # With umask 0, only the mode passed to os.open can keep the file private.
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("encoding", ["base16", "base64", "bin"])
def test_write_creates_a_private_file(tmp_path: Path, encoding: KeyEncoding) -> None:
    path = tmp_path / "swarm.key"
    keyfile.write_key_file(path, README_KEY, encoding=encoding)
    assert mode_of(path) == 0o600
    assert path.read_bytes() == keyfile.format_key_file(README_KEY, encoding)
    assert keyfile.load_key_file(path) == README_KEY
    assert keyfile.load_key_file(str(path)) == README_KEY


def test_write_refuses_to_clobber(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    path.write_bytes(b"precious")
    with pytest.raises(KeyFileError) as info:
        keyfile.write_key_file(path, README_KEY)
    assert info.value.reason is KeyFileReason.IO
    assert isinstance(info.value.__cause__, FileExistsError)
    assert info.value.path == str(path)
    assert path.read_bytes() == b"precious"


@pytest.mark.skipif(os.name != "posix", reason="POSIX permissions")
@pytest.mark.usefixtures("open_umask")
def test_overwrite_replaces_atomically_and_tightens_mode(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    path.write_bytes(b"old")
    path.chmod(0o644)
    key = keyfile.generate_psk()
    keyfile.write_key_file(path, key, overwrite=True)
    assert keyfile.load_key_file(path) == key
    assert mode_of(path) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["swarm.key"]


def test_write_into_a_missing_directory(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "swarm.key"
    for overwrite in (False, True):
        with pytest.raises(KeyFileError) as info:
            keyfile.write_key_file(path, README_KEY, overwrite=overwrite)
        assert info.value.reason is KeyFileReason.IO
        assert isinstance(info.value.__cause__, FileNotFoundError)


def test_write_refuses_a_bad_key_before_touching_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    with pytest.raises(KeyFileError):
        keyfile.write_key_file(path, b"short")
    assert not path.exists()


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.key"
    with pytest.raises(KeyFileError) as info:
        keyfile.load_key_file(path)
    assert info.value.reason is KeyFileReason.IO
    assert info.value.path == str(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, FileNotFoundError)


def test_load_directory(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError) as info:
        keyfile.load_key_file(tmp_path)
    assert info.value.reason is KeyFileReason.IO


def test_load_reports_parse_errors_with_the_path(tmp_path: Path) -> None:
    path = tmp_path / "swarm.key"
    path.write_bytes(HEADER + b"/base16/\nabc\n")
    with pytest.raises(KeyFileError) as info:
        keyfile.load_key_file(path)
    assert info.value.reason is KeyFileReason.WRONG_LENGTH
    assert info.value.path == str(path)
    assert str(info.value).startswith(str(path))


# --- other sources of keys ---------------------------------------------------------------------------


def test_passphrase_is_sha3_256_of_utf8() -> None:
    # FIPS 202 example digests: these pin SHA3-256 (not Keccak-256, not SHA-256).
    assert keyfile.psk_from_passphrase("") == bytes.fromhex(
        "a7ffc6f8bf1ed76651c14756a061d662f580ff4de43b49fa82d80a4b80f8434a"
    )
    assert keyfile.psk_from_passphrase("abc") == bytes.fromhex(
        "3a985da74fe225b2045c172d6bd390bd855f086e3e9d525b46bfe24511431532"
    )
    assert keyfile.psk_from_passphrase("été") == hashlib.sha3_256("été".encode()).digest()


def test_passphrase_with_lone_surrogate() -> None:
    with pytest.raises(UnicodeEncodeError):
        keyfile.psk_from_passphrase("\ud800")


def test_generate_psk() -> None:
    keys = {keyfile.generate_psk() for _ in range(8)}
    assert len(keys) == 8
    assert all(len(k) == PSK_SIZE for k in keys)
