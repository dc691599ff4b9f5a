"""``rtml up`` and the settings of the broker layout: RTML_BROKER_URL set runs ingest, stream and archive
instead of the sidecar; unset, nothing changes. Bad broker input fails with a clear error."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from rtml_cli.main import cli
from rtml_cli.up import UpOptions, plan_stack
from rtml_core.errors import InputError
from rtml_core.settings import Settings
from rtml_stream.broker.codec import decode_trades, trade_subject
from rtml_stream.broker.jetstream import BrokerConfig


def test_broker_url_replaces_the_sidecar_by_ingest_stream_and_archive(tmp_path):
    settings = Settings(home=tmp_path, broker_url="nats://127.0.0.1:4222")
    services, _env = plan_stack(settings, UpOptions(exchange="kraken", symbols="BTC-USD,ETH-USD"), {})
    names = [s.name for s in services]
    assert names == ["dagster-webserver", "dagster-daemon", "ingest", "stream", "archive", "api"]
    ingest, stream, archive = services[2:5]
    assert ingest.argv[3:] == ("ingest", "--exchange", "kraken", "--symbols", "BTC-USD,ETH-USD", "--to",
                               "nats://127.0.0.1:4222", "--health-port", "9110")
    assert "--source" in stream.argv and "nats://127.0.0.1:4222" in stream.argv and "9108" in stream.argv
    assert archive.argv[3:6] == ("archive", "--source", "nats://127.0.0.1:4222")
    assert all(s.health for s in (ingest, stream, archive))
    only, _ = plan_stack(settings, UpOptions(exchange="kraken", services=("sidecar",)), {})
    assert [s.name for s in only] == ["ingest", "stream", "archive"]
    without, _ = plan_stack(Settings(home=tmp_path), UpOptions(exchange="kraken"), {})
    assert "sidecar" in [s.name for s in without] and "ingest" not in [s.name for s in without]
    with pytest.raises(InputError, match="live exchange"):
        plan_stack(settings, UpOptions(), {})  # the default replay goes through the sidecar only


def test_bad_broker_input_is_refused_with_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="not a nats:// URL"):
        BrokerConfig.from_settings(Settings(home=tmp_path), "http://127.0.0.1:4222")
    with pytest.raises(InputError, match="no broker URL"):
        BrokerConfig.from_settings(Settings(home=tmp_path))
    with pytest.raises(InputError, match="RTML_BROKER_GROUP"):
        BrokerConfig.from_settings(Settings(home=tmp_path, broker_group="a.b"), "nats://127.0.0.1:4222")
    with pytest.raises(InputError, match="NATS subject token"):
        trade_subject("kraken", "BTC.USD")
    with pytest.raises(InputError, match="not an rtml trade batch"):
        decode_trades(b"\x93not msgpack of a batch")
    result = CliRunner().invoke(cli, ["stream", "--source", "nats://127.0.0.1:4222", "--exchange", "replay",
                                      "--symbols", "ES-USD"])
    assert result.exit_code == 2 and "live exchange" in result.output
