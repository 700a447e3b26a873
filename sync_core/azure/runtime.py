"""Process lifetime in the Functions host: one configuration and one Syncer per worker process.

The host keeps a Python worker process between invocations; tokens, connections, Key Vault
secrets and the blob ledger are worth keeping with it. The Event Grid handler needs only the
configuration, so it never builds registry clients.
"""

from __future__ import annotations

import os
import threading

from sync_core.azure.state import TableState
from sync_core.config.load import load_config
from sync_core.config.model import SyncConfig
from sync_core.jobs.syncer import Syncer

_lock = threading.Lock()
_config: SyncConfig | None = None
_syncer: Syncer | None = None
_state: TableState | None = None


def shared_config() -> SyncConfig:
    """The configuration from the app settings, read once per process."""
    global _config
    with _lock:
        if _config is None:
            _config = load_config(os.environ)
        return _config


def shared_syncer() -> Syncer:
    """One :class:`Syncer` per process, built from the app settings (tokens and secrets reused)."""
    global _syncer
    config = shared_config()
    with _lock:
        if _syncer is None:
            _syncer = Syncer(config)
        return _syncer


def shared_state() -> TableState:
    """The timer's state table in the app's storage account (``AzureWebJobsStorage``)."""
    global _state
    config = shared_config()
    with _lock:
        if _state is None:
            _state = TableState.from_env(config.queue, os.environ)
        return _state


def reset() -> None:
    """Forget the configuration, the state client and the Syncer (tests, settings changed in place)."""
    global _config, _syncer, _state
    with _lock:
        if _syncer is not None:
            _syncer.close()
        _config = _syncer = _state = None
