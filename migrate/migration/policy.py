"""The pre-copy policy, a pure function of the rounds so far: go on with another round (and
how hard to brake the guest), or stop the guest and copy what is left.

Stop-and-copy comes when the pages still dirty can be sent within the downtime target at the
rate the link has shown, after a round limit, or once three times the memory was sent (the
limits libxc has had). Auto-converge, as QEMU's: a guest that dirties memory faster than half
of what the link carries is throttled (kept stopped part of the time by a SIGSTOP/SIGCONT
duty cycle), from the round after the first where it did (QEMU waits for a second; round 0,
the whole memory, is long enough to judge) and harder at each such round, so that every
migration converges. Half, not all, of the link: above that the rounds shrink so slowly that
the 3x limit comes first, and the final copy would be long.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

PAGE_SIZE = 4096
"""Bytes of a guest page."""


class PolicyError(ValueError):
    """A migration option the policy cannot take; the message names it and why."""


@dataclass(frozen=True)
class PolicyConfig:
    """The knobs of :func:`decide`."""

    max_downtime: float = 0.020
    """Seconds the guest may stay stopped for the final copy."""
    max_rounds: int = 30
    """Pre-copy rounds at most before stop-and-copy."""
    max_sent: float = 3.0
    """Stop-and-copy once this many times the memory was sent."""
    converge_ratio: float = 0.5
    """Throttle when the guest dirties memory faster than this fraction of the link rate..."""
    converge_after: int = 1
    """...this many rounds in a row (then at each further round while it still does)."""
    throttle_step: float = 0.2
    """At least this much more duty at each throttle increase."""
    throttle_max: float = 0.99
    """The most the guest is kept stopped."""

    @classmethod
    def from_options(cls, options: Mapping[str, str]) -> PolicyConfig:
        """The config of ``VM.migrate_send``'s options: ``max_downtime`` (milliseconds) and
        ``max_rounds``; PolicyError naming a bad value."""
        config = cls()
        downtime = options.get("max_downtime")
        if downtime is not None:
            try:
                ms = float(downtime)
            except ValueError:
                raise PolicyError(f"max_downtime {downtime!r} is not a number of ms") from None
            if not 0 < ms <= 3_600_000:
                raise PolicyError(f"max_downtime {downtime!r} must be > 0 and at most 1 hour")
            config = replace(config, max_downtime=ms / 1000)
        rounds = options.get("max_rounds")
        if rounds is not None:
            if not rounds.isdigit() or not 1 <= int(rounds) <= 10_000:
                raise PolicyError(f"max_rounds {rounds!r} must be a whole number from 1 to 10000")
            config = replace(config, max_rounds=int(rounds))
        return config


@dataclass(frozen=True)
class Round:
    """One pre-copy round as the sender saw it."""

    index: int
    pages: int
    """Pages sent (with data or as zero pages)."""
    bytes: int
    """Bytes sent on the wire."""
    seconds: float
    """From the scan that began it to the scan that ended it."""
    dirty_after: int
    """Pages the guest wrote meanwhile (the scan that ended it)."""
    throttle: float
    """The guest's throttle duty during the round (0: none)."""

    @property
    def rate(self) -> float:
        """Bytes per second the link carried."""
        return self.bytes / self.seconds if self.seconds > 0 else 0.0

    @property
    def dirty_rate(self) -> float:
        """Bytes per second the guest dirtied."""
        return self.dirty_after * PAGE_SIZE / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class Decision:
    """Another round at ``throttle`` duty, or (``stop``) stop-and-copy, with its reason."""

    stop: bool
    throttle: float
    reason: str = ""


def link_rate(rounds: Sequence[Round]) -> float:
    """Bytes per second the link carried over all ``rounds`` (0 before any data moved)."""
    seconds = sum(r.seconds for r in rounds)
    return sum(r.bytes for r in rounds) / seconds if seconds > 0 else 0.0


def decide(
    rounds: Sequence[Round], dirty_pages: int, memory_pages: int, config: PolicyConfig
) -> Decision:
    """What to do after ``rounds`` (at least one), with ``dirty_pages`` still to send of a
    guest of ``memory_pages`` pages."""
    if not rounds:
        raise ValueError("decide() needs the first round")
    throttle = rounds[-1].throttle
    rate = link_rate(rounds)
    left = dirty_pages * PAGE_SIZE
    if left == 0 or (rate > 0 and left / rate <= config.max_downtime):
        ms = 1000 * left / rate if rate > 0 else 0.0
        reason = f"{dirty_pages} dirty pages fit the downtime target ({ms:.1f} ms estimated)"
        return Decision(True, throttle, reason)
    if len(rounds) >= config.max_rounds:
        return Decision(True, throttle, f"round limit ({config.max_rounds}) reached")
    sent = sum(r.bytes for r in rounds)
    if sent >= config.max_sent * memory_pages * PAGE_SIZE:
        return Decision(True, throttle, f"{config.max_sent:g}x the memory sent")
    return Decision(False, _throttle(rounds, rate, config))


def _throttle(rounds: Sequence[Round], rate: float, config: PolicyConfig) -> float:
    """The duty for the next round: unchanged unless the guest outran the link the last
    ``converge_after`` rounds; then enough to bring its estimated unthrottled write rate
    under the threshold, and at least one step more."""
    current = rounds[-1].throttle
    threshold = config.converge_ratio * rate
    recent = rounds[-config.converge_after :]
    if len(recent) < config.converge_after or any(r.dirty_rate <= threshold for r in recent):
        return current
    unthrottled = rounds[-1].dirty_rate / max(1.0 - current, 1e-3)
    needed = 1.0 - threshold / unthrottled
    return min(config.throttle_max, max(current + config.throttle_step, needed))
