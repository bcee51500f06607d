"""Weights resolution, download (pooch) with SHA-256 checks, and safe strict loading.

Downloads are served from a local ``http.server`` on 127.0.0.1 (loopback only) in a thread, through the
real download code (:func:`pooch.retrieve` with requests).
"""

from __future__ import annotations

import http.server
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from specfusion.errors import WeightsError, WeightsUnavailableError
from specfusion.features.weights import (
    WeightsSpec,
    cache_dir,
    load_into,
    load_state_dict,
    resolve_weights,
    sha256_file,
)


class _FileHandler(http.server.BaseHTTPRequestHandler):
    """Serves the bytes in ``server.files``; with ``server.cut_after`` set, announces the whole length but
    sends only that many bytes and closes the connection (a download interrupted half-way)."""

    def do_GET(self):  # noqa: N802 (http.server naming)
        data = self.server.files.get(self.path)
        self.server.requests.append(self.path)
        if data is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data if self.server.cut_after is None else data[: self.server.cut_after])
        self.close_connection = True

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture()
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _FileHandler)
    httpd.files = {}
    httpd.requests = []
    httpd.cut_after = None
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture()
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECFUSION_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _checkpoint_bytes(tmp_path: Path) -> bytes:
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = tmp_path / "src.pth"
    torch.save(model.state_dict(), path)
    return path.read_bytes()


def _spec(server, data: bytes, *, sha=None, name="net.pth") -> WeightsSpec:
    import hashlib

    server.files["/" + name] = data
    digest = hashlib.sha256(data).hexdigest() if sha is None else sha
    return WeightsSpec(
        name="test/net", url=f"http://127.0.0.1:{server.server_port}/{name}", sha256=digest, filename=name
    )


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cache_dir_follows_specfusion_home(home):
    assert cache_dir() == home / "weights"


def _cache_files(home: Path) -> list[str]:
    folder = home / "weights"
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_download_verifies_and_caches(server, home, tmp_path):
    data = _checkpoint_bytes(tmp_path)
    spec = _spec(server, data)
    path = resolve_weights(spec)
    assert path == home / "weights" / "net.pth"
    assert path.read_bytes() == data
    assert _cache_files(home) == ["net.pth"]  # no temporary file left beside it
    n_requests = len(server.requests)
    assert resolve_weights(spec) == path  # second call uses the cache
    assert len(server.requests) == n_requests
    assert load_state_dict(path)["0.weight"].shape == (4, 8)


def test_interrupted_download_leaves_nothing_and_the_next_call_starts_over(server, home, tmp_path):
    data = _checkpoint_bytes(tmp_path)
    spec = _spec(server, data)
    server.cut_after = len(data) // 2
    with pytest.raises(WeightsUnavailableError, match="cannot download test/net weights") as info:
        resolve_weights(spec)
    assert spec.url in str(info.value) and "broke off before the end" in str(info.value)
    assert _cache_files(home) == []
    server.cut_after = None
    assert resolve_weights(spec).read_bytes() == data


def test_download_with_wrong_hash_fails_and_leaves_nothing(server, home, tmp_path):
    data = _checkpoint_bytes(tmp_path)
    spec = _spec(server, data, sha="0" * 64)
    with pytest.raises(WeightsError, match="0{64}") as info:
        resolve_weights(spec)
    assert sha256_file_bytes(data) in str(info.value)
    assert spec.url in str(info.value)
    assert _cache_files(home) == []
    with pytest.raises(WeightsError, match="0{64}"):
        resolve_weights(spec)  # refused again: nothing was cached


def sha256_file_bytes(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_offline_error_names_url_file_cache_and_option(home):
    url = f"http://127.0.0.1:{_closed_port()}/x.pth"
    spec = WeightsSpec(name="test/x", url=url, sha256=None, filename="x.pth")
    with pytest.raises(WeightsError) as info:
        resolve_weights(spec)
    message = str(info.value)
    assert url in message
    assert "'x.pth'" in message
    assert str(home / "weights" / "x.pth") in message
    assert "weights_path=FILE" in message and "--weights" not in message  # the CLI adds its flag
    assert info.value.parameters == {"weights_path": "FILE"}


def test_offline_download_of_a_pinned_file_fails_in_one_line(home):
    url = f"http://127.0.0.1:{_closed_port()}/pinned.pth"
    spec = WeightsSpec(name="test/pinned", url=url, sha256="ab" * 32, filename="pinned.pth")
    with pytest.raises(WeightsUnavailableError) as info:
        resolve_weights(spec)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"cannot download test/pinned weights from {url}: cannot connect to 127.0.0.1:")
    assert str(home / "weights" / "pinned.pth") in message and "weights_path=FILE" in message
    assert info.value.parameters == {"weights_path": "FILE"}
    assert _cache_files(home) == []


def test_http_error_is_reported_with_url(server, home):
    spec = WeightsSpec(
        name="test/x", url=f"http://127.0.0.1:{server.server_port}/missing.pth", sha256="0" * 64, filename="missing.pth"
    )
    with pytest.raises(WeightsError, match=r"missing\.pth.*Not Found|Not Found.*missing\.pth"):
        resolve_weights(spec)
    assert not (home / "weights" / "missing.pth").exists()


def test_no_download_when_disabled(home):
    spec = WeightsSpec(name="test/x", url="http://127.0.0.1:9/x.pth", sha256=None, filename="x.pth")
    with pytest.raises(WeightsError, match="downloading is off"):
        resolve_weights(spec, download=False)


def test_explicit_path_wins_and_is_verified(home, tmp_path):
    data = _checkpoint_bytes(tmp_path)
    local = tmp_path / "mine.pth"
    local.write_bytes(data)
    good = WeightsSpec(name="t", url="http://127.0.0.1:9/n.pth", sha256=sha256_file(local), filename="n.pth")
    assert resolve_weights(good, path=local) == local
    prefix = WeightsSpec(name="t", url=good.url, sha256=sha256_file(local)[:8], filename="n.pth")
    assert resolve_weights(prefix, path=local) == local  # torchvision-style 8-hex prefix
    bad = WeightsSpec(name="t", url=good.url, sha256="deadbeef" * 8, filename="n.pth")
    with pytest.raises(WeightsError) as info:
        resolve_weights(bad, path=local)
    assert "deadbeef" * 8 in str(info.value) and sha256_file(local) in str(info.value)
    assert resolve_weights(bad, path=local, verify=False) == local  # a user's own fine-tuned file
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_weights(good, path=tmp_path / "missing.pth")


def test_corrupt_cached_file_is_rejected(home, tmp_path):
    data = _checkpoint_bytes(tmp_path)
    spec = WeightsSpec(name="t", url="http://127.0.0.1:9/n.pth", sha256=sha256_file_bytes(data), filename="n.pth")
    (home / "weights").mkdir(parents=True)
    (home / "weights" / "n.pth").write_bytes(data[:-10])
    with pytest.raises(WeightsError, match="cached weights file"):
        resolve_weights(spec, download=False)


def test_load_state_dict_roundtrip_key_and_strict_load(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    path = tmp_path / "wrapped.pth"
    torch.save({"model": model.state_dict(), "epoch": 3}, path)
    sd = load_state_dict(path, key="model")
    other = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    load_into(other, sd, source=path)
    assert torch.equal(other[0].weight, model[0].weight)
    with pytest.raises(WeightsError, match="no entry 'state'"):
        load_state_dict(path, key="state")


def test_load_into_reports_missing_unexpected_and_shapes(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    sd = model.state_dict()
    sd["extra.weight"] = sd.pop("2.weight")
    with pytest.raises(WeightsError) as info:
        load_into(model, sd, source="some.pth")
    message = str(info.value)
    assert "missing keys: 2.weight" in message and "unexpected keys: extra.weight" in message
    assert "some.pth" in message
    sd = model.state_dict()
    sd["0.weight"] = torch.zeros(5, 8)
    with pytest.raises(WeightsError, match=r"0.weight \(5, 8\) vs \(4, 8\)"):
        load_into(model, sd, source="some.pth")


def test_truncated_and_non_dict_checkpoints_fail_clearly(tmp_path):
    data = _checkpoint_bytes(tmp_path)
    short = tmp_path / "short.pth"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightsError, match="short.pth.*truncated or corrupt"):
        load_state_dict(short)
    listy = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], listy)
    with pytest.raises(WeightsError, match="not a state dict"):
        load_state_dict(listy)


def test_weights_only_refuses_arbitrary_objects_unless_allow_listed(tmp_path):
    path = tmp_path / "numpy_scalar.pth"
    torch.save({"w": torch.ones(2), "best": np.float64(0.5)}, path)
    with pytest.raises(WeightsError, match="numpy_scalar.pth"):
        load_state_dict(path)
    allowed = [np.dtype, type(np.dtype(np.float64)), np._core.multiarray.scalar] if hasattr(np, "_core") else []
    if not allowed:
        pytest.skip("numpy < 2 names its scalar reconstructor differently")
    sd = load_state_dict(path, extra_safe_globals=allowed)
    assert float(sd["best"]) == 0.5
