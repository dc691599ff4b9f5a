"""Every command of ``rtml``, one import per command module (each module owns its commands)."""

from __future__ import annotations

ALL: list = []
