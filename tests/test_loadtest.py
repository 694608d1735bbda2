"""scripts/loadtest.py's bookkeeping (the load itself is measured, not tested: README)."""

from __future__ import annotations

import pytest

from .conftest import load_script

loadtest = load_script("loadtest")


def _level(tps, errors=0, ttft=0.1):
    return {"concurrency": 8, "requests": 16, "errors": errors, "error_kinds": ["X"] if errors else [], "tokens": 768,
            "wall_s": 768 / tps, "tokens_per_s": tps, "ttft_p50": ttft, "ttft_p95": ttft, "latency_p50": 1.0,
            "latency_p95": 2.0}


def test_rounds_merge_into_medians_and_sums():
    m = loadtest.merged([_level(100.0, ttft=0.3), _level(300.0, errors=2, ttft=0.1), _level(200.0, ttft=0.2)])
    assert m["tokens_per_s"] == 200.0 and m["ttft_p50"] == 0.2 and m["rounds_tokens_per_s"] == [100.0, 300.0, 200.0]
    assert m["requests"] == 48 and m["errors"] == 2 and m["error_kinds"] == ["X"] and m["tokens"] == 3 * 768
    one = _level(50.0)
    assert loadtest.merged([one]) is one


def test_rss_check_fails_on_growth_or_errors(capsys):
    report = {"server": "s", "rss_before_mib": 200.0, "rss_after_mib": 203.0, "levels": [_level(100.0)]}
    assert loadtest.rss_check(report, 8)
    assert not loadtest.rss_check({**report, "rss_after_mib": 260.0}, 8)
    assert not loadtest.rss_check({**report, "levels": [_level(100.0, errors=1)]}, 8)
    with pytest.raises(SystemExit, match="RSS is unknown"):
        loadtest.rss_check({**report, "rss_after_mib": None}, 8)
