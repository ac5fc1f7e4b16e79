"""The pre-copy policy (migrate.migration.policy): stop conditions and auto-converge."""

from __future__ import annotations

from dataclasses import replace

import pytest

from migrate.migration.policy import (
    PAGE_SIZE,
    Decision,
    PolicyConfig,
    PolicyError,
    Round,
    decide,
    link_rate,
)

MiB = 1 << 20
MEMORY = 262144  # pages: 1 GiB
LINK = 1000 * MiB  # bytes/s
CONFIG = PolicyConfig()


def round_(index: int, pages: int, dirty_after: int, throttle: float = 0.0) -> Round:
    """A round that sent ``pages`` full pages at :data:`LINK`."""
    size = pages * PAGE_SIZE
    return Round(index, pages, size, size / LINK, dirty_after, throttle)


def test_round_rates() -> None:
    r = Round(0, 256, 256 * PAGE_SIZE, 0.5, 128, 0.0)
    assert r.rate == 2 * MiB
    assert r.dirty_rate == MiB
    assert Round(0, 0, 0, 0.0, 0, 0.0).rate == 0.0
    assert link_rate([]) == 0.0
    assert link_rate([round_(0, 1000, 0), round_(1, 10, 0)]) == pytest.approx(LINK)


def test_first_round_required() -> None:
    with pytest.raises(ValueError, match="first round"):
        decide([], 10, MEMORY, CONFIG)


def test_stops_when_the_rest_fits_the_downtime() -> None:
    rounds = [round_(0, MEMORY, 100)]
    fits = int(0.020 * LINK / PAGE_SIZE)  # 20 ms at the link's rate
    decision = decide(rounds, fits, MEMORY, CONFIG)
    assert decision.stop and decision.throttle == 0.0
    assert f"{fits} dirty pages fit the downtime target" in decision.reason
    assert decide(rounds, fits + 10, MEMORY, CONFIG) == Decision(False, 0.0)
    assert decide(rounds, 0, MEMORY, CONFIG).stop


def test_nothing_dirty_stops_even_without_a_rate() -> None:
    idle = Round(0, 0, 0, 0.0, 0, 0.0)
    assert decide([idle], 0, MEMORY, CONFIG).stop
    assert not decide([idle], 1, MEMORY, CONFIG).stop


def test_downtime_target_is_a_knob() -> None:
    rounds = [round_(0, MEMORY, 100)]
    pages = int(0.1 * LINK / PAGE_SIZE)  # 100 ms worth
    assert not decide(rounds, pages, MEMORY, CONFIG).stop
    assert decide(rounds, pages, MEMORY, PolicyConfig(max_downtime=0.2)).stop


def test_round_limit() -> None:
    config = PolicyConfig(max_rounds=3)
    big = MEMORY // 4
    rounds = [round_(0, MEMORY, big), round_(1, big, big)]
    assert not decide(rounds, big, MEMORY, config).stop
    decision = decide([*rounds, round_(2, big, big)], big, MEMORY, config)
    assert decision.stop and decision.reason == "round limit (3) reached"


def test_three_times_the_memory() -> None:
    config = PolicyConfig(converge_after=100)  # no throttle in the way
    rounds = [round_(0, MEMORY, MEMORY), round_(1, MEMORY, MEMORY)]
    assert not decide(rounds, MEMORY, MEMORY, config).stop
    decision = decide([*rounds, round_(2, MEMORY, MEMORY)], MEMORY, MEMORY, config)
    assert decision.stop and decision.reason == "3x the memory sent"


def test_slow_writer_is_never_throttled() -> None:
    # the guest dirties a tenth of what the link carries: rounds shrink fast on their own
    rounds = [round_(0, MEMORY, MEMORY // 10), round_(1, MEMORY // 10, MEMORY // 30)]
    assert decide(rounds, MEMORY // 30, MEMORY, CONFIG) == Decision(False, 0.0)


def test_fast_writer_throttled_after_the_first_round_then_harder() -> None:
    # a guest dirtying at twice the link rate (each round's pages dirtied twice over)
    r0 = round_(0, MEMORY // 2, MEMORY)
    first = decide([r0], MEMORY, MEMORY, CONFIG)
    assert not first.stop
    # unthrottled 2x the link, threshold half of it: 75% duty needed
    assert first.throttle == pytest.approx(0.75)
    # throttled, it still dirties at 0.6x the link: one more step at least
    r1 = round_(1, MEMORY // 4, int(0.6 * MEMORY // 4), first.throttle)
    second = decide([r0, r1], MEMORY // 8, MEMORY, CONFIG)
    assert second.throttle == pytest.approx(0.95)
    r2 = round_(2, MEMORY // 8, MEMORY // 8, second.throttle)
    assert decide([r0, r1, r2], MEMORY // 8, MEMORY, CONFIG).throttle == 0.99


def test_two_rounds_to_judge_when_asked() -> None:
    config = replace(CONFIG, converge_after=2)
    r0 = round_(0, MEMORY // 2, MEMORY)
    assert decide([r0], MEMORY, MEMORY, config) == Decision(False, 0.0)  # one round: wait
    r1 = round_(1, MEMORY // 4, MEMORY // 2)
    assert decide([r0, r1], MEMORY // 2, MEMORY, config).throttle == pytest.approx(0.75)


def test_throttle_kept_while_the_guest_is_under_the_threshold() -> None:
    r0 = round_(0, MEMORY // 2, MEMORY)
    r1 = round_(1, MEMORY // 4, MEMORY // 2)
    r2 = round_(2, MEMORY // 4, MEMORY // 40, 0.4)
    assert decide([r0, r1, r2], MEMORY // 40, MEMORY, CONFIG) == Decision(False, 0.4)


def test_throttle_grows_by_steps_at_least() -> None:
    # just over the threshold: the estimate alone would add almost nothing
    pages = MEMORY // 4
    over = int(pages * 0.51)
    rounds = [round_(0, pages, over), round_(1, pages, over)]
    assert decide(rounds, over, MEMORY, CONFIG).throttle == pytest.approx(0.2)


def test_stop_keeps_the_throttle() -> None:
    rounds = [round_(0, MEMORY, 10, 0.6)]
    assert decide(rounds, 10, MEMORY, CONFIG) == Decision(
        True, 0.6, decide(rounds, 10, MEMORY, CONFIG).reason
    )


def test_options() -> None:
    assert PolicyConfig.from_options({}) == CONFIG
    config = PolicyConfig.from_options({"max_downtime": "300", "max_rounds": "5"})
    assert config.max_downtime == pytest.approx(0.3) and config.max_rounds == 5
    assert PolicyConfig.from_options({"max_downtime": "0.5"}).max_downtime == 0.0005


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_downtime": "fast"}, "max_downtime 'fast' is not a number of ms"),
        ({"max_downtime": "0"}, "must be > 0"),
        ({"max_downtime": "-5"}, "must be > 0"),
        ({"max_downtime": "nan"}, "must be > 0"),
        ({"max_downtime": "inf"}, "must be > 0"),
        ({"max_rounds": "0"}, "max_rounds '0' must be a whole number"),
        ({"max_rounds": "2.5"}, "max_rounds '2.5' must be a whole number"),
        ({"max_rounds": "99999"}, "from 1 to 10000"),
    ],
)
def test_bad_options(options: dict[str, str], message: str) -> None:
    with pytest.raises(PolicyError, match=message):
        PolicyConfig.from_options(options)
