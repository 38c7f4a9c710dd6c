"""Named state transitions for models with a lifecycle (jobs, servers).

A model lists its allowed moves once; code calls `obj.transition("run")`
instead of assigning `status = ...` here and there, and an impossible move
raises instead of corrupting the record.
"""
from django.utils import timezone


class InvalidTransition(Exception):
    pass


class StateMachine:
    """transitions: {name: (from_states, to_state)}; '*' matches any state."""

    def __init__(self, field, transitions, final=()):
        self.field = field
        self.transitions = transitions
        self.final = frozenset(final)

    def allowed(self, obj, name):
        sources, _ = self.transitions[name]
        return sources == "*" or getattr(obj, self.field) in sources

    def available(self, obj):
        return [name for name in self.transitions if self.allowed(obj, name)]


class StatefulMixin:
    """Mixed into a model that defines `machine = StateMachine(...)`."""

    machine: StateMachine

    def can(self, name):
        return self.machine.allowed(self, name)

    def transition(self, name, *, save=True, **fields):
        if name not in self.machine.transitions:
            raise InvalidTransition(f"unknown transition {name!r}")
        current = getattr(self, self.machine.field)
        if not self.machine.allowed(self, name):
            raise InvalidTransition(f"{type(self).__name__} {self.pk}: cannot {name} from {current}")
        target = self.machine.transitions[name][1]
        setattr(self, self.machine.field, target)
        for key, value in fields.items():
            setattr(self, key, value)
        if hasattr(self, "state_changed"):
            self.state_changed = timezone.now()
        if save:
            self.save(update_fields=[self.machine.field, *fields, *(["state_changed"] if hasattr(self, "state_changed") else [])])
        return current, target

    @property
    def is_final(self):
        return getattr(self, self.machine.field) in self.machine.final
