"""Values that change during a stage: loss weights and thresholds as step-wise schedules.

A schedulable field takes a plain number, or a schedule keyed by the stage's
step (optimizer steps already finished in the stage) from which each value holds:

    lambda_cycle: 1.0                             # the whole stage
    lambda_cycle: {from_step: {0: 1.0, 400: 0.3}} # 1.0 for steps 0-399, then 0.3

Population Based Training (`cseg tune` with `scheduler: {type: pbt}`) changes
these values while trials train; its `best.yaml` writes the winning trial's
values as such schedules, so `cseg pretrain best.yaml` replays them. The
training loop hands each method the stage section at every step
(`stage_at_step`), with every schedule replaced by its value there.
"""

from __future__ import annotations

import bisect
import typing
from typing import Annotated, Generic, TypeVar

from pydantic import Discriminator, Field, Tag, model_validator

from .section import Section

Value = TypeVar("Value")


class StepSchedule(Section, Generic[Value]):
    """`{from_step: {0: v0, s1: v1, ...}}`: v0 from the stage's start, v1 from its step s1, ..."""

    from_step: dict[Annotated[int, Field(ge=0)], Value] = Field(min_length=1)

    @model_validator(mode="after")
    def _starts_at_zero(self) -> StepSchedule:
        if 0 not in self.from_step:
            raise ValueError("a schedule starts at step 0 (add `0: <value>` to from_step)")
        self.from_step = dict(sorted(self.from_step.items()))
        return self

    def at(self, stage_step: int) -> Value:
        """The value in force at `stage_step` (0-based within the stage)."""
        starts = list(self.from_step)
        return self.from_step[starts[bisect.bisect_right(starts, stage_step) - 1]]


# Union members' tags: pydantic puts them in error locations, which validation drops.
NUMBER_TAG, SCHEDULE_TAG = "plain number", "step schedule"


def _member(value) -> str:
    return SCHEDULE_TAG if isinstance(value, dict | StepSchedule) else NUMBER_TAG


def _number_or_schedule(number):
    """`number | StepSchedule[number]`, validated as the one the value looks like."""
    return Annotated[
        Annotated[number, Tag(NUMBER_TAG)] | Annotated[StepSchedule[number], Tag(SCHEDULE_TAG)],
        Discriminator(_member),
    ]


Weight = Annotated[float, Field(ge=0.0)]
Threshold = Annotated[float, Field(gt=0.0, le=1.0)]
ScheduledWeight = _number_or_schedule(Weight)
ScheduledThreshold = _number_or_schedule(Threshold)


def value_at(value: float | StepSchedule, stage_step: int) -> float:
    """A schedulable field's value at `stage_step` (a plain number holds everywhere)."""
    return value.at(stage_step) if isinstance(value, StepSchedule) else value


def values_of(value: float | StepSchedule) -> list[float]:
    """Every value a schedulable field takes (one for a plain number)."""
    return list(value.from_step.values()) if isinstance(value, StepSchedule) else [value]


def schedulable_fields(section_type: type[Section]) -> list[str]:
    """The names of a section's fields that accept a `StepSchedule`."""
    return [
        name
        for name, field in section_type.model_fields.items()
        if _mentions_schedule(field.annotation)
    ]


def has_schedules(section: Section) -> bool:
    """True when any field of `section` holds a `StepSchedule`."""
    return any(
        isinstance(getattr(section, name), StepSchedule) for name in type(section).model_fields
    )


def stage_at_step(stage: Section, stage_step: int) -> Section:
    """A copy of `stage` with every schedule replaced by its value at `stage_step`."""
    update = {
        name: value.at(stage_step)
        for name in type(stage).model_fields
        if isinstance(value := getattr(stage, name), StepSchedule)
    }
    return stage.model_copy(update=update) if update else stage


def _mentions_schedule(annotation) -> bool:
    if isinstance(annotation, type) and issubclass(annotation, StepSchedule):
        return True
    return any(_mentions_schedule(arg) for arg in typing.get_args(annotation))
