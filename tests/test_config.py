"""Configuration: properties parsing, documented defaults, unknown keys, per-model precedence."""
from __future__ import annotations

from dataclasses import fields

import pytest

from conftest import ROOT
from modelserve.config import (ModelConfig, ServerConfig, TORCHSERVE_IGNORED_KEYS, load_server_config,
                               parse_properties, split_address)
from modelserve.errors import ConfigError


def test_parse_properties_java_rules():
    text = "# comment\n! also comment\na=1\nb : two\nc=x\\\n  y\nd=http\\://h\\:1\ne\n"
    assert parse_properties(text) == {"a": "1", "b": "two", "c": "xy", "d": "http://h:1", "e": ""}


def test_default_config_file_matches_the_code(tmp_path):
    loaded = load_server_config(str(ROOT / "config" / "config.properties"))
    assert loaded.unknown == () and loaded.ignored == ()
    assert loaded.config == ServerConfig()


def test_every_key_is_documented():
    text = (ROOT / "docs" / "configuration.md").read_text()
    props = (ROOT / "config" / "config.properties").read_text()
    for f in fields(ServerConfig):
        assert f"`{f.name}`" in text, f.name
        assert f.name in props, f.name


def test_unknown_and_ignored_keys_are_reported(tmp_path):
    p = tmp_path / "c.properties"
    p.write_text("inference_address=http://0.0.0.0:9000\nvmargs=-Xmx1g\nbogus_key=1\njob_queue_size=7\n")
    loaded = load_server_config(str(p))
    assert loaded.unknown == ("bogus_key",)
    assert loaded.ignored == ("vmargs",) and "vmargs" in TORCHSERVE_IGNORED_KEYS
    assert loaded.config.job_queue_size == 7
    assert split_address(loaded.config.inference_address, 8080) == ("0.0.0.0", 9000)


def test_bad_values_name_the_key(tmp_path):
    p = tmp_path / "c.properties"
    p.write_text("job_queue_size=lots\n")
    with pytest.raises(ConfigError, match="job_queue_size"):
        load_server_config(str(p))
    with pytest.raises(ConfigError, match="https"):
        split_address("https://127.0.0.1:8443", 8080)


def test_model_config_precedence():
    server = ServerConfig(batch_size=2, max_batch_delay=30, default_response_timeout=50)
    cfg = ModelConfig.resolve(server, {}, default_workers=3)
    assert (cfg.batch_size, cfg.max_batch_delay, cfg.response_timeout, cfg.min_workers) == (2, 30, 50, 3)
    cfg = ModelConfig.resolve(server, {"batchSize": 8, "minWorkers": 2, "responseTimeout": 9}, default_workers=3)
    assert (cfg.batch_size, cfg.min_workers, cfg.max_workers, cfg.response_timeout) == (8, 2, 3, 9)
    cfg = ModelConfig.resolve(server, {"batchSize": 8}, default_workers=1, batch_size=4)
    assert cfg.batch_size == 4
    with pytest.raises(ConfigError, match="batchSize"):
        ModelConfig.resolve(server, {"batchSize": "many"}, default_workers=1)
