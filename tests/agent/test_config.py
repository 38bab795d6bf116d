from pathlib import Path

import pytest

from agent.config import Config, ConfigError, from_dict, load, split_bind


def test_every_key_is_optional():
    assert from_dict({}) == Config()
    assert Config().server.bind == "127.0.0.1:9777"
    assert Config().storage.mount_roots == ("/data", "/mnt")
    assert Config().idle.action == "none"


def test_values_are_read_and_typed(tmp_path):
    path = tmp_path / "a.toml"
    path.write_text('[storage]\nfstab = "/x/fstab"\ninclude_loop = true\n[idle]\nwindow_min = 5\n')
    config = load(path)
    assert config.storage.fstab == Path("/x/fstab")
    assert config.storage.include_loop is True
    assert config.idle.window_min == 5.0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"sever": {}}, "unknown section [sever]"),
        ({"server": {"bnd": "x"}}, "unknown key server.bnd"),
        ({"server": {"bind": "localhost"}}, "expected HOST:PORT"),
        ({"idle": {"action": "reboot"}}, "expected one of none, poweroff"),
        ({"idle": {"cpu_pct": "ten"}}, "expected a non-negative number"),
        ({"storage": {"mount_roots": ["data"]}}, "absolute paths"),
        ({"storage": {"include_loop": 1}}, "expected true or false"),
    ],
)
def test_bad_values_name_the_key(data, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        from_dict(data)


def test_missing_named_file_and_bad_toml_are_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)


def test_split_bind_handles_ipv6():
    assert split_bind("[::1]:9777") == ("::1", 9777)
    assert split_bind("0.0.0.0:80") == ("0.0.0.0", 80)
