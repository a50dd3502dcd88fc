"""Property: any override of any config key with a value of a wrong type or range either
validates or fails with a one-line error naming the key — never a traceback, and never
after compute has started."""

from __future__ import annotations

import math
import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from cycleqd.cli import _check_run_args
from cycleqd.errors import CycleQDError
from cycleqd.run.configs import compose
from tests.tiny import tiny_overrides

BASE = tiny_overrides(Path("/nonexistent-cache"))


def _leaves(node, prefix=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, f"{prefix}{k}.")
    else:
        yield prefix[:-1]


KEYS = sorted(_leaves(OmegaConf.to_container(compose(BASE), resolve=False)))
TRICKY = [
    "bogus",
    "${nope}",
    "[",
    "]",
    "'",
    '"',
    "=",
    ",",
    "-1",
    "0",
    "1e309",
    "null",
    "true",
    "",
    "???",
    "[1,2]",
    "{a: 1}",
    "a b",
]


def _render(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    if isinstance(v, list):
        return "[" + ",".join(_render(x) for x in v) + "]"
    return str(v)


values = st.one_of(
    st.integers(-(10**12), 10**12).map(_render),
    st.floats(allow_nan=True, allow_infinity=True).map(_render),
    st.booleans().map(_render),
    st.none().map(_render),
    st.lists(st.one_of(st.integers(-5, 5), st.floats(-2, 2)), max_size=3).map(_render),
    st.sampled_from(TRICKY),
    st.text(max_size=12),
    st.text(max_size=12).map(lambda s: "'" + s.replace("\\\\", "").replace("'", "") + "'"),
)


@settings(
    max_examples=int(os.environ.get("CYCLEQD_PROPERTY_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(key=st.sampled_from(KEYS), value=values, plus=st.booleans())
def test_any_override_validates_or_names_its_key(tmp_path: Path, key: str, value: str, plus: bool):
    cache = tmp_path / "cache"
    override = f"{'++' if plus else ''}{key}={value}"
    base = [o for o in tiny_overrides(cache) if not o.startswith(f"{key}=")]
    try:
        _check_run_args([*base, override, "dry_run=true", f"hydra.run.dir={tmp_path / 'run'}"])
    except CycleQDError as e:
        message = str(e)
        assert "\n" not in message, message
        leaf = key.rsplit(".", 1)[-1]
        named = getattr(e, "key", "")
        assert leaf in message or (named and (key.startswith(named) or named.startswith(key))), (override, message)
    assert not cache.exists()  # nothing was built, trained or loaded
    assert not (tmp_path / "run").exists()
