"""What a saga is: stages of steps, each step an action and its compensation.

Steps of one stage run in parallel; a stage starts when the previous one
has succeeded. Stages before the *pivot* may be rolled back: if one of their
steps fails for good, every step that succeeded or may have succeeded is
compensated. Reaching the pivot is the commit decision; stages from the
pivot on are retried until they succeed and are never compensated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from saga_actors.sagas.protocol import StepKind

__all__ = ["SagaContext", "SagaDefinition", "Step"]


@dataclass(frozen=True, slots=True)
class SagaContext:
    """What a step's command factory sees.

    `data` is journaled with the saga; `ephemeral` (secrets such as a card
    number) lives in memory only and is `None` after a recovery - which only
    ever runs steps after the pivot and compensations. `reason` is why the
    saga is being rolled back, once it is.
    """

    saga_id: str
    data: Any
    ephemeral: Any = field(default=None, repr=False)  # secrets: never in a repr or a log
    reason: str | None = None


CommandFactory = Callable[[SagaContext], Any]


@dataclass(frozen=True, slots=True)
class Step:
    name: str
    participant: str
    action: CommandFactory
    compensation: CommandFactory | None = None


@dataclass(frozen=True)
class SagaDefinition:
    """A named list of stages with a pivot, and the steps run on rollback.

    `on_abort` steps run, alongside the compensations, whenever the saga is
    rolled back (e.g. to mark the order cancelled); like compensations they
    are retried until they succeed.
    """

    name: str
    stages: tuple[tuple[Step, ...], ...]
    pivot: int
    on_abort: tuple[Step, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if not self.stages or any(not stage for stage in self.stages):
            problems.append("every saga needs at least one stage, and every stage a step")
        if not 1 <= self.pivot <= len(self.stages):
            problems.append(f"pivot must be in 1..{len(self.stages)}, got {self.pivot}")
        names = [s.name for stage in self.stages for s in stage] + [s.name for s in self.on_abort]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            problems.append(f"step names must be unique: {duplicates}")
        for stage in self.stages[self.pivot :]:
            problems += [
                f"step {s.name!r} is after the pivot and cannot have a compensation"
                for s in stage
                if s.compensation is not None
            ]
        if problems:
            raise ValueError(f"invalid saga {self.name!r}: " + "; ".join(problems))
        object.__setattr__(self, "_steps", {s.name: s for s in self.all_steps()})

    def all_steps(self) -> list[Step]:
        return [s for stage in self.stages for s in stage] + list(self.on_abort)

    def step(self, name: str) -> Step:
        steps: dict[str, Step] = self._steps  # type: ignore[attr-defined]
        return steps[name]

    def compensable(self, up_to_stage: int) -> list[str]:
        """Names of steps with a compensation in stages 0..up_to_stage before the pivot."""
        last = min(up_to_stage, self.pivot - 1)
        return [s.name for stage in self.stages[: last + 1] for s in stage if s.compensation is not None]


def command_for(step: Step, kind: StepKind, context: SagaContext) -> Any:
    """The command to send for a step's action ("do") or compensation ("undo")."""
    factory = step.action if kind == "do" else step.compensation
    if factory is None:
        raise ValueError(f"step {step.name!r} has no compensation")
    return factory(context)
