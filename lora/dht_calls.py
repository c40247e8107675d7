"""DHT store/get calls with a time bound.

``hivemind.DHT.store``/``get`` wait forever on a DHT child that lost the request (seen under
CPU load); the averaging protocol must never block a round on one, so every call it makes goes
through these two functions.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

DHT_CALL_TIMEOUT = 15.0  # seconds


def bounded_store(dht, key: str, value, *, timeout: float = DHT_CALL_TIMEOUT, **kwargs) -> bool:
    """``dht.store``; False when it fails or does not answer within ``timeout`` seconds."""
    try:
        return bool(dht.store(key, value, return_future=True, **kwargs).result(timeout=timeout))
    except TimeoutError:
        log.warning("DHT store of %s timed out after %.0f s", key, timeout)
        return False


def bounded_get(dht, key: str, *, timeout: float = DHT_CALL_TIMEOUT, **kwargs):
    """``dht.get``; None when nothing is stored or it does not answer within ``timeout``."""
    try:
        return dht.get(key, return_future=True, **kwargs).result(timeout=timeout)
    except TimeoutError:
        log.warning("DHT get of %s timed out after %.0f s", key, timeout)
        return None
