"""The scaler's pure decision: bounds, hysteresis, deadline pressure and the warm floor."""

from __future__ import annotations

import dataclasses

import pytest

from orchestrator.scaler.config import RoleBounds, ScalerConfig
from orchestrator.scaler.policy import Decision, Move, PolicyMemory, ScalerInputs, decide

CONFIG = ScalerConfig(
    vision=RoleBounds(1, 3), generators=RoleBounds(1, 6), jobs_per_generator=10,
    vision_per_generator=0.5, max_queue_wait_s=30, idle_s=100, warm_s=500,
)


def inputs(now_s: float = 0.0, queued: int = 0, *, running: int = 0, retrying: int = 0,
           oldest_wait_s: float = 0.0, vision: int = 1, generators: int = 1) -> ScalerInputs:
    return ScalerInputs(now_s, queued, retrying, running, oldest_wait_s, vision, generators)


def run(steps: list[ScalerInputs], config: ScalerConfig = CONFIG) -> list[Decision]:
    """Decide at each step, carrying the memory along (the scaler loop's way)."""
    memory, decisions = PolicyMemory(), []
    for step in steps:
        decision = decide(config, step, memory)
        memory = decision.memory
        decisions.append(decision)
    return decisions


def test_an_empty_queue_at_the_minimum_stays_there() -> None:
    (decision,) = run([inputs()])
    assert (decision.generators.desired, decision.vision.desired) == (1, 1)
    assert decision.generators.move is Move.STEADY and not decision.pressured


@pytest.mark.parametrize(
    ("queued", "running", "retrying", "generators", "vision"),
    [(11, 0, 0, 2, 1), (20, 0, 0, 2, 1), (21, 0, 0, 3, 2), (5, 20, 5, 3, 2), (41, 0, 0, 5, 3)],
)
def test_a_backlog_grows_both_roles_at_once_to_what_it_needs(
    queued: int, running: int, retrying: int, generators: int, vision: int
) -> None:
    (decision,) = run([inputs(queued=queued, running=running, retrying=retrying)])
    assert decision.generators.desired == generators
    assert decision.vision.desired == vision
    assert decision.generators.move is Move.UP


def test_growth_stops_at_the_maximum() -> None:
    (decision,) = run([inputs(queued=10_000)])
    assert decision.generators.needed == 1000
    assert (decision.generators.desired, decision.vision.desired) == (6, 3)


def test_a_role_below_its_minimum_grows_to_it_with_no_work() -> None:
    config = dataclasses.replace(CONFIG, generators=RoleBounds(2, 6))
    (decision,) = run([inputs(generators=0, vision=0)], config)
    assert (decision.generators.desired, decision.vision.desired) == (2, 1)
    assert decision.generators.move is Move.UP


def test_a_role_over_its_maximum_shrinks_at_once() -> None:
    (decision,) = run([inputs(queued=10_000, generators=9, vision=5)])
    assert decision.generators.move is Move.OVER_BOUND
    assert (decision.generators.desired, decision.vision.desired) == (6, 3)


def test_shrinking_waits_for_idle_s_of_less_work_then_goes_to_what_is_needed() -> None:
    decisions = run([
        inputs(0, queued=0, generators=4, vision=2),
        inputs(50, queued=0, generators=4, vision=2),
        inputs(99.9, queued=15, generators=4, vision=2),  # still fewer needed (2): no break
        inputs(100, queued=15, generators=4, vision=2),
    ])
    assert [d.generators.move for d in decisions] == [Move.COOLING] * 3 + [Move.DOWN]
    assert [d.generators.desired for d in decisions] == [4, 4, 4, 2]
    assert [d.vision.desired for d in decisions] == [2, 2, 2, 1]


def test_a_burst_in_the_idle_time_starts_the_wait_again() -> None:
    decisions = run([
        inputs(0, generators=3),
        inputs(90, queued=30, generators=3),  # needs all three again: the idle run breaks
        inputs(120, generators=3),
        inputs(219, generators=3),
        inputs(220, generators=3),
    ])
    assert [d.generators.move for d in decisions] == [
        Move.COOLING, Move.STEADY, Move.COOLING, Move.COOLING, Move.DOWN
    ]
    assert decisions[-1].generators.desired == 1


def test_with_no_idle_time_a_role_shrinks_at_the_first_look() -> None:
    config = dataclasses.replace(CONFIG, idle_s=0)
    (decision,) = run([inputs(generators=5)], config)
    assert decision.generators.move is Move.DOWN and decision.generators.desired == 1


def test_a_job_waiting_past_the_deadline_adds_a_generator_beyond_the_backlog() -> None:
    (calm,) = run([inputs(queued=2, oldest_wait_s=30, generators=2)])
    (late,) = run([inputs(queued=2, oldest_wait_s=30.5, generators=2)])
    assert not calm.pressured and calm.generators.desired == 2
    assert late.pressured and late.generators.desired == 3 and late.generators.move is Move.UP
    assert late.vision.desired == 2


def test_deadline_pressure_keeps_adding_one_per_look_up_to_the_bound() -> None:
    steps = [inputs(i, queued=1, oldest_wait_s=60 + i, generators=n) for i, n in
             enumerate([1, 2, 3, 4, 5, 6])]
    assert [d.generators.desired for d in run(steps)] == [2, 3, 4, 5, 6, 6]


def test_deadline_pressure_needs_a_queued_job() -> None:
    # An old age reported with nothing queued (it was just claimed) is no pressure.
    (decision,) = run([inputs(queued=0, running=3, oldest_wait_s=1000, generators=2)])
    assert not decision.pressured and decision.generators.move is Move.COOLING


def test_the_warm_floor_holds_the_peak_for_warm_s_after_a_scale_down() -> None:
    decisions = run([
        inputs(0, queued=60),  # up to 6
        inputs(10, generators=6, vision=3),  # cooling: still 6
        inputs(110, generators=6, vision=3),  # down to 1; warm stays 6
        inputs(300, generators=1, vision=1),
        inputs(609.9, generators=1, vision=1),
        inputs(610, generators=1, vision=1),  # 500 s after the last look at the peak
    ])
    assert [d.generators.desired for d in decisions] == [6, 6, 1, 1, 1, 1]
    assert [d.generators.warm for d in decisions] == [6, 6, 6, 6, 6, 1]
    assert [d.vision.warm for d in decisions] == [3, 3, 3, 3, 3, 1]


def test_the_warm_floor_is_never_below_the_minimum_nor_above_the_maximum() -> None:
    config = dataclasses.replace(CONFIG, generators=RoleBounds(2, 3), warm_s=0)
    (low,) = run([inputs(generators=2)], config)
    assert low.generators.warm == 2
    lowered = dataclasses.replace(CONFIG, generators=RoleBounds(1, 2))
    first = decide(CONFIG, inputs(queued=60), PolicyMemory())
    after = decide(lowered, inputs(1, generators=6, vision=3), first.memory)
    assert after.generators.warm == 2 and after.generators.desired == 2


def test_vision_follows_the_generators_it_feeds() -> None:
    config = dataclasses.replace(CONFIG, vision=RoleBounds(1, 8), vision_per_generator=1.0)
    (decision,) = run([inputs(queued=45)], config)
    assert (decision.generators.desired, decision.vision.desired) == (5, 5)


@pytest.mark.parametrize(
    ("field", "value"),
    [("queued", -1), ("running", -2), ("retrying", -1), ("oldest_wait_s", -0.5),
     ("vision_actors", -1), ("generator_actors", -1)],
)
def test_negative_inputs_are_refused(field: str, value: int) -> None:
    with pytest.raises(ValueError, match=field):
        dataclasses.replace(inputs(), **{field: value})


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: RoleBounds(0, 2), "min_actors"),
        (lambda: RoleBounds(3, 2), "max_actors"),
        (lambda: ScalerConfig(jobs_per_generator=0), "jobs_per_generator"),
        (lambda: ScalerConfig(interval_s=0), "interval_s"),
        (lambda: ScalerConfig(max_queue_wait_s=-1), "max_queue_wait_s"),
        (lambda: ScalerConfig(idle_s=-1), "idle_s"),
        (lambda: ScalerConfig(warm_s=-1), "warm_s"),
        (lambda: ScalerConfig(vision_per_generator=-0.1), "vision_per_generator"),
    ],
)
def test_bad_config_is_refused(make: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        make()  # type: ignore[operator]
