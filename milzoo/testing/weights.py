"""Checks for a weight distribution (docs/hub.md): every entry it ships loads by name with the network cut,
from the installed package, and its model card's metrics are measured again, exactly, on the held-out data
its recipe defines (:func:`milzoo.hub.verify`).

A weight distribution's test file is then::

    from milzoo.testing.weights import entry_names, check_weight_entry

    @pytest.mark.parametrize("name", entry_names("my_weights_pkg"))
    def test_entry(name, monkeypatch):
        check_weight_entry(name, monkeypatch)
"""

from __future__ import annotations

import json
import logging
import socket
from importlib.resources import files

log = logging.getLogger(__name__)

__all__ = ["check_weight_entry", "cut_network", "entry_names", "offline_hub"]


def entry_names(module: str, index: str = "weights/index.json") -> list[str]:
    """The zoo names a weight package's index lists."""
    return sorted(json.loads(files(module).joinpath(*index.split("/")).read_text(encoding="utf-8")))


def cut_network(monkeypatch) -> None:
    """Make every name lookup and socket connection fail for the rest of the test (nothing may be downloaded)."""
    def refuse(*args, **kwargs):
        raise OSError("the network is cut in this test: nothing may be downloaded")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def offline_hub(monkeypatch, cache_dir) -> None:
    """:func:`cut_network`, and a Hugging Face cache at ``cache_dir`` instead of the user's real one (offline
    mode off, so the code under test decides for itself whether to try the Hub)."""
    from huggingface_hub import constants as hf_constants

    cut_network(monkeypatch)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache_dir))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)


def check_weight_entry(name: str, monkeypatch) -> None:
    """``name`` loads offline from its package, and :func:`milzoo.hub.verify` reproduces its card exactly."""
    import milzoo
    from milzoo.hub import get_pretrained, verify

    cut_network(monkeypatch)
    entry = get_pretrained(name)
    assert entry.sources and entry.sources[0].startswith("package "), (name, entry.sources)
    model = milzoo.load_pretrained(name)
    assert not model.training
    result = verify(name)
    assert result.ok, "\n".join(result.lines())
