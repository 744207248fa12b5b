"""What every benchmark starts from: real servers on loopback in a temporary folder, the
product's processes (from this checkout or another), percentiles, and where results go."""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from csm_router.demo.relay import RecordingSmtp  # noqa: E402
from support.servers import DovecotServer, RedisServer, grant_traverse  # noqa: E402

# `--product-src DIR`: run the product's processes from another checkout's src/ (say, the
# previous release), measured with the same harness.
_product_src = ""


@dataclass(frozen=True)
class Servers:
    dovecot: DovecotServer
    redis: RedisServer
    smtp: RecordingSmtp
    workdir: Path


@contextlib.contextmanager
def servers(name: str, *, persistent: bool = False) -> Iterator[Servers]:
    """Dovecot (IMAP, LMTP), redis-server (persisting every write if asked) and a relay."""
    with tempfile.TemporaryDirectory(prefix=f"csm-{name}-") as tmp:
        root = Path(tmp)
        for folder in ("dovecot", "redis", "work"):
            (root / folder).mkdir()
        grant_traverse(root / "dovecot", up_to=root)
        with DovecotServer(root / "dovecot") as dovecot, \
                RedisServer(root / "redis", persistent=persistent) as redis, \
                RecordingSmtp() as smtp:
            yield Servers(dovecot, redis, smtp, root / "work")


def arguments(argv: list[str]) -> list[str]:
    """The command line, with `--product-src DIR` taken out (and remembered)."""
    global _product_src
    argv = list(argv)
    if "--product-src" in argv:
        at = argv.index("--product-src")
        _product_src = str(Path(argv[at + 1]).resolve())
        del argv[at : at + 2]
    return argv


def product_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for the product's processes: this checkout's package, or `--product-src`'s."""
    return {**env, "PYTHONPATH": _product_src} if _product_src else env


def pct(values: list[float], p: float) -> float:
    """The p-th percentile (nearest rank); NaN when there is nothing to rank."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def save(name: str, results: dict[str, Any]) -> None:
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
