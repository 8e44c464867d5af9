"""``physarum registry``'s command line: each subcommand's flags, the service ``add`` describes
(-command, -image, -file), and bad input as one-line usage errors. The home directory is a
temporary one, so the default key file (~/.privKeyRegistry) is never the real one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from physarum.cli import registry as cli
from physarum.cli.flags import UsageError
from physarum.overlay.identity import KeyPair, load_or_create_key_pair
from physarum.overlay.multiaddr import Multiaddr
from physarum.services.registry import ServiceInfo, seal_entry

BOOT = f"/ip4/127.0.0.1/tcp/4001/p2p/{KeyPair.generate().peer_id}"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


def one_shot(*argv: str, keyfile: Path | None = None) -> list[str]:
    return [*argv, "-bootstrap", BOOT, *(["-keyfile", str(keyfile)] if keyfile else ["-ephemeral"])]


def add(*argv: str) -> ServiceInfo:
    args, _ = cli.parse_args(one_shot("add", *argv), {})
    service: ServiceInfo = args.service
    return service


def usage_error(argv: list[str], env: dict[str, str] | None = None) -> str:
    with pytest.raises(UsageError) as info:
        cli.parse_args(argv, {} if env is None else env)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message, message
    return message


def test_serve(tmp_path: Path, home: Path) -> None:
    admin = KeyPair.generate().peer_id
    args, opts = cli.parse_args(["serve", "-db", str(tmp_path / "r.db"), "-admin", str(admin),
                                 "--admin", str(admin), "-sync-interval", "5"], {})
    assert (args.command, args.db, args.admins, args.sync_interval) == ("serve", str(tmp_path / "r.db"), [admin, admin], 5.0)
    assert opts.bootstrap == [] and opts.listen == [Multiaddr("/ip4/0.0.0.0/tcp/0")]
    args, again = cli.parse_args(["serve", "-db", "r.db"], {})
    assert (args.admins, args.sync_interval) == ([], 30.0)
    # a fresh identity each run, and no key file written: not the one-shots' signing key
    assert again.key_pair.peer_id != opts.key_pair.peer_id
    assert list(home.iterdir()) == []
    # a key file when asked for, and node flags before or after the subcommand
    keyfile = tmp_path / "serve.key"
    args, opts = cli.parse_args(["-bootstrap", BOOT, "serve", "-db", "r.db", "-keyfile", str(keyfile),
                                 "-p2p-listen-addr", "127.0.0.1:4010"], {})
    assert opts.key_pair.peer_id == load_or_create_key_pair(str(keyfile)).peer_id
    assert opts.bootstrap == [Multiaddr(BOOT)] and opts.listen == [Multiaddr("/ip4/127.0.0.1/tcp/4010")]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["serve"], "the following arguments are required: -db"),
        (["serve", "-db"], "expected one argument"),
        (["serve", "-db", "r.db", "-admin", "0xdeadbeef"], "bad -admin: peer id '0xdeadbeef' is not base58btc"),
        (["serve", "-db", "r.db", "-admin", "nope"], "bad -admin: peer id multihash"),
        (["serve", "-db", "r.db", "-admin", ""], "bad -admin: empty peer id"),
        (["serve", "-db", "r.db", "-sync-interval", "0"], "-sync-interval"),
        (["serve", "-db", "r.db", "-command", "x"], "unrecognized arguments: -command x"),
        ([], "the following arguments are required: COMMAND"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_serve_usage_errors(argv: list[str], message: str) -> None:
    assert message in usage_error(argv)


def test_one_shots(tmp_path: Path) -> None:
    keyfile = tmp_path / "me.key"
    for command in (["get", "hello"], ["delete", "hello"], ["list"]):
        args, opts = cli.parse_args(one_shot(*command, keyfile=keyfile), {})
        assert args.command == command[0] and args.timeout == 30.0
        assert opts.bootstrap == [Multiaddr(BOOT)]
        assert opts.key_pair.peer_id == load_or_create_key_pair(str(keyfile)).peer_id
        if command[0] != "list":
            assert args.name == "hello"
    args, _ = cli.parse_args(["get", "x", "-timeout", "2.5", "-ephemeral"], {"P2P_BOOTSTRAPS": BOOT})
    assert args.timeout == 2.5
    args, opts = cli.parse_args(["-bootstrap", BOOT, "list", "-ephemeral"], {})
    assert opts.bootstrap == [Multiaddr(BOOT)]


def test_one_shots_sign_with_the_default_key_file(home: Path) -> None:
    _, first = cli.parse_args(["delete", "hello", "-bootstrap", BOOT], {})
    assert (home / ".privKeyRegistry").is_file()
    assert first.key_pair.peer_id == load_or_create_key_pair(str(home / ".privKeyRegistry")).peer_id
    _, second = cli.parse_args(["add", "hello", "-image", "busybox", "-bootstrap", BOOT], {})
    assert second.key_pair.peer_id == first.key_pair.peer_id


def test_a_bad_service_creates_no_key_file(home: Path) -> None:
    with pytest.raises(UsageError, match="bad service name"):
        cli.parse_args(["add", "bad name", "-command", "x", "-bootstrap", BOOT], {})
    assert not (home / ".privKeyRegistry").exists()


@pytest.mark.parametrize("command", [["add", "x", "-image", "i"], ["get", "x"], ["delete", "x"], ["list"]])
def test_one_shots_need_a_bootstrap(command: list[str], home: Path) -> None:
    assert usage_error([*command, "-ephemeral"]) == (
        f"{command[0]}: give -bootstrap MADDR (or $P2P_BOOTSTRAPS) to reach the registry"
    )
    assert usage_error([*command, "-ephemeral"], {"P2P_BOOTSTRAPS": "  "}).startswith(f"{command[0]}: give -bootstrap")
    assert "-bootstrap" in usage_error([*command, "-ephemeral", "-bootstrap", "/ip4/127.0.0.1/tcp/4001"])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["get"], "the following arguments are required: NAME"),
        (["delete"], "the following arguments are required: NAME"),
        (["get", "a", "b"], "unrecognized arguments: b"),
        (["list", "-timeout", "0"], "-timeout"),
        (["list", "-timeout", "soon"], "-timeout"),
    ],
)
def test_one_shot_usage_errors(argv: list[str], message: str) -> None:
    assert message in usage_error(one_shot(*argv))


def test_add_with_a_command_line_or_an_image() -> None:
    assert add("hello", "-command", "physarum hello") == ServiceInfo("hello", ("physarum", "hello"))
    # split as a shell would, and no shell runs it
    assert add("sh", "-command", "sh -c 'echo \"hi there\"; exit 0' $SERVICE_PORT").command == (
        "sh", "-c", 'echo "hi there"; exit 0', "$SERVICE_PORT",
    )
    assert add("web", "--image", "busybox:latest", "-soft-rtt-ms", "5", "-hard-rtt-ms", "50.5", "-cpu", "0.5",
               "-memory-mb", "64") == ServiceInfo("web", (), "busybox:latest", 5.0, 50.5, 0.5, 64)
    both = add("both", "-command=srv", "-image=img:1")
    assert (both.command, both.image) == (("srv",), "img:1")


def test_add_from_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    info = ServiceInfo("hello", ("physarum", "hello"), soft_rtt_ms=5, hard_rtt_ms=80, memory_mb=32)
    plain = tmp_path / "hello.json"
    plain.write_text(json.dumps(info.to_dict()))
    assert add("-file", str(plain)) == info
    assert add("hello", "-file", str(plain)) == info  # NAME may repeat the file's
    # what `registry get` prints is taken back as it is
    cli._print(seal_entry(KeyPair.generate(), "hello", info, 7).to_dict())
    printed = tmp_path / "got.json"
    printed.write_text(capsys.readouterr().out)
    assert json.loads(printed.read_text())["seq"] == 7
    assert add("-file", str(printed)) == info
    # but not a deleted entry's output, which has no service
    cli._print(seal_entry(KeyPair.generate(), "hello", None, 8).to_dict())
    deleted = tmp_path / "deleted.json"
    deleted.write_text(capsys.readouterr().out)
    assert "must be a JSON object" in usage_error(one_shot("add", "-file", str(deleted)))


def test_add_file_usage_errors(tmp_path: Path, home: Path) -> None:
    good = tmp_path / "hello.json"
    good.write_text('{"name": "hello", "image": "busybox"}')
    assert usage_error(one_shot("add", "other", "-file", str(good))) == "NAME 'other' differs from the file's 'hello'"
    for flag in (["-command", "x"], ["-image", "y"], ["-soft-rtt-ms", "5"], ["-memory-mb", "1"], ["-cpu", "1"]):
        assert usage_error(one_shot("add", "-file", str(good), *flag)) == (
            "-file describes the whole service: give no other service flags"
        )
    missing = tmp_path / "missing.json"
    assert usage_error(one_shot("add", "-file", str(missing))) == f"cannot read -file {missing}: No such file or directory"
    assert usage_error(one_shot("add", "-file", str(tmp_path))) == f"cannot read -file {tmp_path}: Is a directory"
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "hello",')
    assert usage_error(one_shot("add", "-file", str(bad))).startswith(f"-file {bad} is not JSON: ")
    bad.write_bytes(b"\xff\xfe\x00")
    assert usage_error(one_shot("add", "-file", str(bad))).startswith(f"-file {bad} is not JSON: ")
    bad.write_text('{"name": "hello", "image": "busybox", "port": 80}')
    assert usage_error(one_shot("add", "-file", str(bad))) == "unknown service field(s): port"
    bad.write_text('["hello"]')
    assert usage_error(one_shot("add", "-file", str(bad))) == "a service must be a JSON object"
    # ~ is the (temporary) home
    (home / "svc.json").write_text('{"name": "home", "command": ["run"]}')
    assert add("-file", "~/svc.json") == ServiceInfo("home", ("run",))


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["-command", "x"], "add: give NAME (or -file)"),
        ([], "add: give NAME (or -file)"),
        (["hello"], "service hello: give a command, an image, or both"),
        (["hello", "-command", ""], "service hello: give a command, an image, or both"),
        (["hello", "-command", "sh -c 'unclosed"], "bad -command: No closing quotation"),
        (["a/b", "-command", "x"], "bad service name 'a/b'"),
        (["hello", "-image", "two words"], "bad image 'two words'"),
        (["hello", "-image", "i", "-soft-rtt-ms", "-5"], "argument -soft-rtt-ms/--soft-rtt-ms: '-5' is not a positive number"),
        (["hello", "-image", "i", "-soft-rtt-ms", "0"], "'0' is not a positive number"),
        (["hello", "-image", "i", "-soft-rtt-ms", "nan"], "'nan' is not a positive number"),
        (["hello", "-image", "i", "-hard-rtt-ms", "inf"], "'inf' is not a positive number"),
        (["hello", "-image", "i", "-hard-rtt-ms", "5ms"], "'5ms' is not a number"),
        (["hello", "-image", "i", "-cpu", "0"], "argument -cpu/--cpu: '0' is not a positive number"),
        (["hello", "-image", "i", "-memory-mb", "1.5"], "argument -memory-mb/--memory-mb: '1.5' is not a whole number"),
        (["hello", "-image", "i", "-memory-mb", "0"], "'0' is not a positive number"),
        (["hello", "-image", "i", "-soft-rtt-ms", "10", "-hard-rtt-ms", "5"],
         "service hello: soft_rtt_ms (10) is over hard_rtt_ms (5)"),
        (["hello", "-image", "i", "-port", "80"], "unrecognized arguments: -port 80"),
    ],
)
def test_add_usage_errors(argv: list[str], message: str) -> None:
    assert message in usage_error(one_shot("add", *argv))


def test_main_reports_usage_errors_on_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["get", "hello", "-ephemeral"]) == 2
    err = capsys.readouterr().err
    assert err == "physarum registry: get: give -bootstrap MADDR (or $P2P_BOOTSTRAPS) to reach the registry\n"
    # an invalid service is refused before the node starts
    assert cli.main(one_shot("add", "hello", "-soft-rtt-ms", "5")) == 2
    assert capsys.readouterr().err == "physarum registry: service hello: give a command, an image, or both\n"
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.mark.parametrize("command", [[], ["serve"], ["add"], ["get"], ["list"], ["delete"]])
def test_help_texts(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.parse_args([*command, "-help"], {})
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith(f"usage: physarum registry {' '.join(command)}".strip())
    assert "default None" not in text and "``" not in text
    if command == ["add"]:
        for flag in ("-file", "-command", "-image", "-soft-rtt-ms", "-hard-rtt-ms", "-cpu", "-memory-mb", "-keyfile"):
            assert flag in text
