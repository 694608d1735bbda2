"""Counters for GET /metrics (Prometheus text format 0.0.4), named as llama-server's are."""

from __future__ import annotations

import threading

PREFIX = "llamatool"


class Metrics:
    def __init__(self):
        self._lock = threading.Lock()
        self.counters = {
            "requests_total": 0,
            "requests_failed": 0,
            "requests_cancelled": 0,
            "prompt_tokens_total": 0,
            "prompt_tokens_cached_total": 0,
            "tokens_predicted_total": 0,
        }
        self.seconds = {"time_to_first_token_seconds_sum": 0.0, "request_seconds_sum": 0.0}
        self.first_tokens = 0

    def count(self, name: str, n: int = 1) -> None:
        with self._lock:
            self.counters[name] += n

    def first_token(self, seconds: float) -> None:
        with self._lock:
            self.seconds["time_to_first_token_seconds_sum"] += seconds
            self.first_tokens += 1

    def finished(self, prompt_evaluated: int, prompt_cached: int, generated: int, seconds: float) -> None:
        with self._lock:
            self.counters["requests_total"] += 1
            self.counters["prompt_tokens_total"] += prompt_evaluated
            self.counters["prompt_tokens_cached_total"] += prompt_cached
            self.counters["tokens_predicted_total"] += generated
            self.seconds["request_seconds_sum"] += seconds

    def render(self, busy_slots: int, waiting: int, n_slots: int) -> str:
        lines = []

        def metric(name: str, kind: str, help_: str, value) -> None:
            lines.extend([f"# HELP {PREFIX}:{name} {help_}", f"# TYPE {PREFIX}:{name} {kind}", f"{PREFIX}:{name} {value}"])

        with self._lock:
            c, s, n_first = dict(self.counters), dict(self.seconds), self.first_tokens
        metric("requests_total", "counter", "Generation requests completed.", c["requests_total"])
        metric("requests_failed_total", "counter", "Generation requests that failed.", c["requests_failed"])
        metric("requests_cancelled_total", "counter", "Requests whose client went away.", c["requests_cancelled"])
        metric("prompt_tokens_total", "counter", "Prompt tokens evaluated.", c["prompt_tokens_total"])
        metric("prompt_tokens_cached_total", "counter", "Prompt tokens reused from a slot's cache.",
               c["prompt_tokens_cached_total"])
        metric("tokens_predicted_total", "counter", "Tokens generated.", c["tokens_predicted_total"])
        metric("time_to_first_token_seconds_sum", "counter", "Sum of times to first token.",
               f"{s['time_to_first_token_seconds_sum']:.6f}")
        metric("time_to_first_token_count", "counter", "Requests that produced a first token.", n_first)
        metric("request_seconds_sum", "counter", "Sum of request durations.", f"{s['request_seconds_sum']:.6f}")
        metric("requests_processing", "gauge", "Slots generating now.", busy_slots)
        metric("requests_deferred", "gauge", "Requests waiting for a slot.", waiting)
        metric("slots", "gauge", "Slots (-np).", n_slots)
        return "\n".join(lines) + "\n"
