"""On-disk cache of downloaded registry model versions: download once, survive pod restarts.

Layout (root = ``MODEL_CACHE_DIR`` or ``~/.cache/model-deploy/models``)::

    <root>/<model name>/<version>/model/            the MLflow model directory (MLmodel, ...)
    <root>/<model name>/<version>/pv_mappings.yaml  the pipeline config, when the model has one
    <root>/<model name>/<version>/.complete         JSON ``CacheMarker``: where it came from

An entry is valid only with its ``.complete`` marker. It is filled in a private temporary
directory next to it and renamed into place in one step, so a crash mid-download never leaves a
half entry that looks complete; a lock file serialises concurrent downloaders of one version
(several replicas sharing a volume) and lets the lock holder delete partial directories that
crashed processes left behind. Registered model versions are immutable, so a complete entry is
used without contacting the registry (pass ``refresh=True`` to the loader to re-download).
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel, Field, ValidationError

from model_deploy.runtime.models.base import ModelLoadError

logger = logging.getLogger(__name__)

CACHE_DIR_ENV = "MODEL_CACHE_DIR"
MARKER_NAME = ".complete"
MODEL_SUBDIR = "model"
CONFIG_NAME = "pv_mappings.yaml"
PARTIAL_PREFIX = ".partial-"
LOCK_TIMEOUT_SECONDS = 1800.0  # a large model over a slow link; a stuck holder must not block forever

_SAFE_COMPONENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class CacheMarker(BaseModel):
    """Contents of ``.complete``: enough to know what the entry is without asking MLflow."""

    model_name: str
    version: str
    source: str = Field(description="registry URI of the version, e.g. models:/name/3")
    tracking_uri: str
    run_id: str | None = None
    artifact_uri: str | None = Field(default=None, description="where the model files were downloaded from")
    config_file: str | None = Field(default=None, description="pipeline config file name inside the entry")
    config_origin: str | None = Field(default=None, description="artifact path the config came from")
    downloaded_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))


class CachedModel(BaseModel):
    """A complete cache entry."""

    path: Path
    marker: CacheMarker

    @property
    def model_dir(self) -> Path:
        return self.path / MODEL_SUBDIR

    @property
    def config_path(self) -> Path | None:
        return self.path / self.marker.config_file if self.marker.config_file else None


def default_cache_dir() -> Path:
    configured = os.environ.get(CACHE_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "model-deploy" / "models"


def safe_path_component(name: str) -> str:
    """A file-system-safe directory name; unusual names get a hash suffix so they cannot collide."""
    if _SAFE_COMPONENT.fullmatch(name) and name not in (".", ".."):
        return name
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{cleaned}-{digest}"


class ModelCache:
    """Download-once storage for registry model versions (see module docstring)."""

    def __init__(self, root: str | os.PathLike | None = None):
        self.root = Path(root).expanduser() if root is not None else default_cache_dir()

    def entry_dir(self, model_name: str, version: str) -> Path:
        return self.root / safe_path_component(model_name) / safe_path_component(str(version))

    def lookup(self, model_name: str, version: str) -> CachedModel | None:
        """The complete entry for this version, or None (absent, partial or unreadable marker)."""
        path = self.entry_dir(model_name, version)
        marker_file = path / MARKER_NAME
        try:
            marker = CacheMarker.model_validate_json(marker_file.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValidationError, ValueError) as exc:
            logger.warning("ignoring cache entry %s: unreadable %s (%s)", path, MARKER_NAME, exc)
            return None
        if not (path / MODEL_SUBDIR).is_dir():
            logger.warning("ignoring cache entry %s: marker present but %s/ is missing", path, MODEL_SUBDIR)
            return None
        return CachedModel(path=path, marker=marker)

    def populate(self, model_name: str, version: str, fill: Callable[[Path], CacheMarker],
                 *, replace: bool = False) -> CachedModel:
        """Create the entry atomically: ``fill(tmp_dir)`` downloads into ``tmp_dir`` and returns the
        marker; the directory is then renamed into place. If another process completed the entry
        while we waited for the lock, its entry is returned and ``fill`` is not called."""
        final = self.entry_dir(model_name, version)
        parent = final.parent
        try:
            parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ModelLoadError(f"model cache {self.root}: cannot create {parent} ({exc.strerror or exc}); "
                                 f"set {CACHE_DIR_ENV} to a writable directory") from exc
        with self._locked(parent / f".{final.name}.lock"):
            existing = self.lookup(model_name, version)
            if existing is not None and not replace:
                logger.info("model cache hit for %s version %s (filled by another process)", model_name, version)
                return existing
            self._remove_partials(parent, final.name)  # we hold the lock: their writers are gone
            tmp = Path(tempfile.mkdtemp(prefix=f"{PARTIAL_PREFIX}{final.name}-", dir=parent))
            try:
                marker = fill(tmp)
                (tmp / MARKER_NAME).write_text(marker.model_dump_json(indent=2))
                if final.exists():  # a stale/incomplete entry, or replace=True
                    shutil.rmtree(final)
                os.rename(tmp, final)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
        entry = self.lookup(model_name, version)
        if entry is None:  # pragma: no cover - only if the file system lost what we just wrote
            raise ModelLoadError(f"model cache {final}: entry vanished right after it was written")
        return entry

    @staticmethod
    def _remove_partials(parent: Path, entry_name: str) -> None:
        for stale in parent.glob(f"{PARTIAL_PREFIX}{entry_name}-*"):
            logger.info("removing partial download %s left by an interrupted process", stale)
            shutil.rmtree(stale, ignore_errors=True)

    @staticmethod
    @contextmanager
    def _locked(lock_path: Path) -> Iterator[None]:
        deadline = time.monotonic() + LOCK_TIMEOUT_SECONDS
        with open(lock_path, "a+b") as handle:
            logged = False
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise ModelLoadError(
                            f"model cache: {lock_path} stayed locked for {LOCK_TIMEOUT_SECONDS:.0f}s by "
                            "another download; check for a stuck process or delete the lock file") from None
                    if not logged:
                        logger.info("waiting for another process downloading into %s", lock_path.parent)
                        logged = True
                    time.sleep(0.2)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
