"""The one way configs are validated, and the one error family they raise.
Every config dataclass checks its fields with `Fields`; a `ConfigError` names the field path
(``EvolveConfig.train.lr``), the value and the accepted range, and nested configs re-root it."""
from __future__ import annotations

import math
import numbers
import operator
from typing import Any, Iterable, Mapping, Sequence, TypeVar

__all__ = ["ConfigError", "Fields", "is_int", "is_real", "unknown_fields"]

_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<unset>"})()

E = TypeVar("E", bound="ConfigError")


class ConfigError(ValueError):
    """A configuration field has an invalid value (or is unknown), or a config cannot fit a genome.

    Built from parts, the message reads ``EvolveConfig.train.lr = -1.0 is invalid: expected a
    finite number > 0``; with a ``reason`` instead of ``accepted`` it reads ``<field_path>:
    <reason>``; a plain message (``ConfigError("LIV #1 ...")``) is kept as it is.

    Attributes:
        field_path: dotted path of the field from the outermost config, e.g.
            ``"EvolveConfig.train.lr"`` (the root is the config class name); None when the
            error is not about one field.
        field: the last component of ``field_path`` (None without a path).
        value: the rejected value (None when not known).
        accepted: a phrase saying what would be valid, e.g. ``"a finite number > 0"``.
        reason: free text used instead of ``accepted`` (unknown keys, failed look-ups).
    """

    def __init__(self, message: str | None = None, *, field_path: str | None = None, value: Any = _UNSET,
                 accepted: str | None = None, reason: str | None = None):
        self.field_path = field_path
        self.value = None if value is _UNSET else value
        self._has_value = value is not _UNSET
        self.accepted = accepted
        self.reason = reason
        self._message = message
        super().__init__(self._render())

    @property
    def field(self) -> str | None:
        return None if self.field_path is None else self.field_path.rsplit(".", 1)[-1]

    def _render(self) -> str:
        if self._message is not None:
            return self._message
        path = self.field_path or "config"
        if self.reason is not None:
            return f"{path}: {self.reason}"
        if self.accepted is not None and self._has_value:
            return f"{path} = {self.value!r} is invalid: expected {self.accepted}"
        if self.accepted is not None:
            return f"{path} is invalid: expected {self.accepted}"
        return f"{path} is invalid"

    def within(self, path: str, error: type[E] | None = None) -> E:
        """The same error seen from an enclosing config: the root of ``field_path`` (the inner
        config's class name) is replaced by ``path``.

        ``TrainConfig.lr`` within ``"EvolveConfig.train"`` is ``EvolveConfig.train.lr``; an error
        without a field path keeps its message as the reason, under ``path``.

        Arguments:
            path: where the inner config sits, e.g. ``"EvolveConfig.train"``.
            error: the class of the new error (default: this error's class).

        Returns:
            A new error (raise it ``from None``).
        """
        cls = error or type(self)
        if self.field_path is None or self._message is not None:
            value = self.value if self._has_value else _UNSET
            return cls._build(field_path=path, value=value, accepted=None, reason=str(self))
        _, dot, rest = self.field_path.partition(".")
        value = self.value if self._has_value else _UNSET
        return cls._build(field_path=path + dot + rest, value=value, accepted=self.accepted,
                          reason=self.reason)

    @classmethod
    def _build(cls: type[E], **parts: Any) -> E:
        """An instance from parts, bypassing a subclass's own positional signature."""
        err = cls.__new__(cls)
        ConfigError.__init__(err, **parts)
        return err


def is_int(value: Any) -> bool:
    """Whether ``value`` is a Python int (bool excluded): JSON-ready integer fields."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a Python int or float (bool excluded)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_integral(value: Any) -> bool:
    """Python or numpy integers (bool and numpy bool excluded)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _is_number(value: Any) -> bool:
    """Python or numpy reals (bools excluded)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and type(value).__name__ != "bool_"


def _fmt(x: Any) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 1e15:
        return str(int(x))
    return str(x)


def int_range(lo: int | None = None, hi: int | None = None) -> str:
    """``"an integer >= 1"``, ``"an integer in [0, 10]"``, ``"an integer"``."""
    if lo is not None and hi is not None:
        return f"an integer in [{_fmt(lo)}, {_fmt(hi)}]"
    if lo is not None:
        return f"an integer >= {_fmt(lo)}"
    if hi is not None:
        return f"an integer <= {_fmt(hi)}"
    return "an integer"


def real_range(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
               hi_open: bool = False) -> str:
    """``"a finite number > 0"``, ``"a number in [0, 1)"``, ``"a finite number"``."""
    if lo is not None and hi is not None:
        return f"a number in {'(' if lo_open else '['}{_fmt(lo)}, {_fmt(hi)}{')' if hi_open else ']'}"
    if lo is not None:
        return f"a finite number {'>' if lo_open else '>='} {_fmt(lo)}"
    if hi is not None:
        return f"a finite number {'<' if hi_open else '<='} {_fmt(hi)}"
    return "a finite number"


class Fields:
    """The validators of one config object's fields; every failure raises ``error`` naming
    ``<owner>.<field>``, the value and the accepted range.

    Each check reads the field from ``obj`` (or takes ``value=``) and returns the value,
    normalised where said (numpy integers to int with ``integral``; floats where noted).

    Arguments:
        owner: the root of the field paths (the config class name, e.g. ``"TrainConfig"``).
        obj: the config object the fields are read from (None: pass ``value=`` to each check).
        error: the `ConfigError` class to raise.
        integral: integer fields also accept numpy integers (converted to int); otherwise only
            Python ints (what JSON configs hold).
    """

    def __init__(self, owner: str, obj: Any = None, *, error: type[ConfigError] = ConfigError,
                 integral: bool = False):
        self.owner = owner
        self.obj = obj
        self.error = error
        self.integral = integral

    def path(self, name: str) -> str:
        return f"{self.owner}.{name}"

    def _get(self, name: str, value: Any) -> Any:
        return getattr(self.obj, name) if value is _UNSET else value

    def error_for(self, name: str, accepted: str, *, value: Any = _UNSET,
                  message: str | None = None) -> ConfigError:
        """The error for field ``name`` (its current value unless ``value`` is given), not raised;
        ``message`` replaces the standard text."""
        return self.error._build(message=message, field_path=self.path(name), value=self._get(name, value),
                                 accepted=accepted, reason=None)

    def fail(self, name: str, accepted: str, *, value: Any = _UNSET, message: str | None = None) -> None:
        """Raises `error_for` of these arguments."""
        raise self.error_for(name, accepted, value=value, message=message)

    def fail_reason(self, name: str, reason: str, *, value: Any = _UNSET, accepted: str | None = None) -> None:
        """Raises the error for field ``name`` with a free-text reason (a failed look-up that
        already says what is valid): the message reads ``<path>: <reason>``."""
        raise self.error._build(field_path=self.path(name), value=self._get(name, value), accepted=accepted,
                                reason=reason)

    def int(self, name: str, lo: int | None = None, hi: int | None = None, *, value: Any = _UNSET,
            accepted: str | None = None) -> int:
        """An integer in [lo, hi] (either bound optional). Returns the value (as int)."""
        v = self._get(name, value)
        ok_type = _is_integral(v) if self.integral else is_int(v)
        if not ok_type:
            self.fail(name, accepted or int_range(lo, hi), value=v)
        v = operator.index(v)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            self.fail(name, accepted or int_range(lo, hi), value=v)
        return v

    def real(self, name: str, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False, value: Any = _UNSET, accepted: str | None = None) -> Any:
        """A finite number in the given range (bounds optional, open or closed). Returns the
        value unchanged (an int stays an int)."""
        v = self._get(name, value)
        text = accepted or real_range(lo, hi, lo_open=lo_open, hi_open=hi_open)
        if not (_is_number(v) if self.integral else is_real(v)) or not math.isfinite(v):
            self.fail(name, text, value=v)
        if lo is not None and (v <= lo if lo_open else v < lo):
            self.fail(name, text, value=v)
        if hi is not None and (v >= hi if hi_open else v > hi):
            self.fail(name, text, value=v)
        return v

    def bool(self, name: str, *, value: Any = _UNSET) -> bool:
        """True or False (numpy bools too when ``integral``). Returns a Python bool."""
        v = self._get(name, value)
        numpy_bool = type(v).__module__ == "numpy" and type(v).__name__ in ("bool_", "bool")  # numpy 1 / 2
        if not (isinstance(v, bool) or (self.integral and numpy_bool)):
            self.fail(name, "true or false", value=v)
        return bool(v)

    def choice(self, name: str, choices: Sequence[Any], *, value: Any = _UNSET) -> Any:
        """One of ``choices``. Returns the value."""
        v = self._get(name, value)
        if isinstance(v, bool) or v not in choices:
            self.fail(name, f"one of {list(choices)}", value=v)
        return v

    def instance(self, name: str, cls: type, what: str | None = None, *, value: Any = _UNSET) -> Any:
        """An instance of ``cls``. Returns the value."""
        v = self._get(name, value)
        if not isinstance(v, cls):
            self.fail(name, what or f"a {cls.__name__}", value=v)
        return v


def unknown_fields(owner: str, data: Mapping[str, Any], valid: Iterable[str],
                   error: type[E] = ConfigError) -> E | None:
    """The error for keys of ``data`` that are not fields of ``owner`` (None if all are known).

    The path names the first unknown key (``TrainConfig.learning_rate``); the message lists every
    unknown key and the valid fields.
    """
    valid = list(valid)
    unknown = sorted((k for k in data if k not in valid), key=str)
    if not unknown:
        return None
    return error._build(field_path=f"{owner}.{unknown[0]}", value=data[unknown[0]],
                        accepted=None,
                        reason=f"unknown {owner} field(s) {unknown}; valid fields: {valid}")
