"""Every command of ``rtml``, one import per command module (each module owns its commands)."""

from __future__ import annotations

ALL: list = []
from rtml_cli.candles import backfill, candles, import_history  # noqa: E402
ALL.extend([candles, import_history, backfill])
from rtml_cli.online import online  # noqa: E402
ALL.append(online)
from rtml_cli.models import models  # noqa: E402
ALL.append(models)
from rtml_cli.serve import serve  # noqa: E402
ALL.append(serve)
from rtml_cli.features import features  # noqa: E402
ALL.append(features)
from rtml_cli.demo import demo  # noqa: E402
ALL.append(demo)
from rtml_cli.stream import stream  # noqa: E402
ALL.append(stream)
