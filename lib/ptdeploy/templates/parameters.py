"""Notebook parameters: one declaration, three surfaces, one typed and validated object.

A template notebook has a cell tagged ``parameters`` with plain defaults (papermill
injects its own cell right after it). The next cell calls::

    params = ptdeploy.templates.parameters.resolve(specs.LLAMA_COMPLETIONS, globals())

which, depending on where the notebook runs,

- on Databricks: creates ``dbutils.widgets`` (text or dropdown, with labels) seeded with
  the cell's defaults and reads them back; job ``base_parameters`` arrive there;
- in local Jupyter: shows an ipywidgets form (``ptdeploy.templates.widget_form``) seeded the same
  way (or from a parameters file under ``ptdeploy lab --parameters``); each edit is
  checked at once, its error shown next to the widget, and a valid edit is what the
  following cells read;
- headless under papermill: takes the injected values;

and converts every value from its string form (widgets only deliver strings) to its
declared type, checking it. A bad value fails with the parameter's name, the value given
and what is valid; a parameter the spec does not declare (``papermill -p modle_source``)
is an error with a did-you-mean, never silently ignored.

Secrets are never parameters: tokens come from the environment, a profile or the
notebook context (see ``ptdeploy.targets``).
"""

from __future__ import annotations

import ast
import difflib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ptdeploy.errors import ParameterError

Kind = Literal["str", "int", "float", "bool", "choice"]
_SECRET_NAME = re.compile(r"(token|secret|password|api_key|apikey|pat)$", re.IGNORECASE)
_TRUE = {"true", "1", "yes", "y", "on"}
_FALSE = {"false", "0", "no", "n", "off"}
# The comment papermill puts at the top of the cell it injects.
_PAPERMILL_MARK = "# Parameters"


@dataclass(frozen=True)
class Param:
    """One declared parameter: its type, what is valid, and how the widget shows it."""

    name: str
    kind: Kind = "str"
    label: str = ""
    help: str = ""
    choices: tuple[str, ...] = ()
    minimum: float | None = None
    maximum: float | None = None
    optional: bool = False  # empty string / None allowed, resolves to None
    check: Callable[[Any], None] | None = None  # raises ValueError with a reason

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", self.name):
            raise ValueError(f"parameter name {self.name!r} must be a lower-case identifier")
        if _SECRET_NAME.search(self.name):
            raise ValueError(
                f"parameter {self.name!r} looks like a secret: secrets are never notebook "
                "parameters (use the environment, a profile or a Databricks secret scope)"
            )
        if self.kind == "choice" and not self.choices:
            raise ValueError(f"parameter {self.name!r}: kind 'choice' needs choices")

    def valid_text(self) -> str:
        """What a valid value looks like, for error messages and widget labels."""
        if self.kind == "choice":
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        elif self.kind == "bool":
            text = "true or false"
        elif self.kind in ("int", "float"):
            what = "a whole number" if self.kind == "int" else "a number"
            lo = "" if self.minimum is None else f" >= {_fmt(self.minimum)}"
            hi = "" if self.maximum is None else f" <= {_fmt(self.maximum)}"
            text = what + (lo + ("," if lo and hi else "") + hi)
        else:
            text = self.help or "text"
        return text + (" (or empty)" if self.optional else "")

    def convert(self, value: Any) -> Any:
        """The typed value of ``value`` (a Python value or a widget string), or an error."""
        original = value
        if isinstance(value, str):
            value = value.strip()
        if value is None or (isinstance(value, str) and value == ""):
            if self.optional:
                return None
            self._fail(original, "a value is required")
        try:
            if self.kind == "int":
                converted: Any = _to_int(value)
            elif self.kind == "float":
                if isinstance(value, bool):
                    raise ValueError
                converted = float(value)
                if converted != converted or converted in (float("inf"), float("-inf")):
                    raise ValueError
            elif self.kind == "bool":
                converted = _to_bool(value)
            elif self.kind == "choice":
                converted = str(value)
                if converted not in self.choices:
                    close = difflib.get_close_matches(converted, self.choices, n=1)
                    hint = f" Did you mean {close[0]!r}?" if close else ""
                    self._fail(original, f"not a valid choice.{hint}")
            else:
                if not isinstance(value, str | int | float) or isinstance(value, bool):
                    raise ValueError
                converted = str(value)
        except ParameterError:
            raise
        except (ValueError, TypeError):
            self._fail(original, f"expected {self.valid_text()}")
        if self.kind in ("int", "float"):
            if self.minimum is not None and converted < self.minimum:
                self._fail(original, f"must be >= {_fmt(self.minimum)}")
            if self.maximum is not None and converted > self.maximum:
                self._fail(original, f"must be <= {_fmt(self.maximum)}")
        if self.check is not None:
            try:
                self.check(converted)
            except ValueError as exc:
                self._fail(original, str(exc))
        return converted

    def widget_text(self, value: Any) -> str:
        """The string a widget shows for a typed value."""
        if value is None:
            return ""
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)

    def _fail(self, value: Any, reason: str) -> None:
        raise ParameterError(
            f"parameter {self.name!r}: invalid value {value!r}: {reason}. "
            f"Valid: {self.valid_text()}."
        )


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not value.is_integer():
            raise ValueError
        return int(value)
    text = str(value).replace("_", "")
    if re.fullmatch(r"[+-]?\d+", text):
        return int(text)
    if re.fullmatch(r"[+-]?\d+\.0*", text):
        return int(float(text))
    raise ValueError


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError


class Params(Mapping[str, Any]):
    """The resolved, typed parameters: attribute and mapping access, read-only."""

    def __init__(self, spec: ParameterSpec, values: dict[str, Any], surface: str) -> None:
        self._spec = spec
        self._values = dict(values)
        self._error: str | None = None
        self.surface = surface  # "databricks-widgets" | "ipywidgets" | "papermill" | "python"

    def _update(self, values: dict[str, Any] | None, error: str | None) -> None:
        """Called by the ipywidgets form on every edit: new values, or why they are refused."""
        if values is not None:
            self._values = dict(values)
        self._error = error

    def _checked(self) -> dict[str, Any]:
        error = self.__dict__.get("_error")
        if error:
            raise ParameterError(f"{error}\nFix the value in the parameters form above.")
        return self.__dict__.get("_values", {})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        values = self._checked()
        if name in values:
            return values[name]
        raise AttributeError(f"no parameter {name!r}; declared: {', '.join(values)}")

    def __getitem__(self, name: str) -> Any:
        return self._checked()[name]

    def __iter__(self):
        return iter(self._checked())

    def __len__(self) -> int:
        return len(self._checked())

    def as_dict(self) -> dict[str, Any]:
        return dict(self._checked())

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._values.items())
        return f"Params({inner})"

    def _repr_markdown_(self) -> str:
        rows = "\n".join(
            f"| `{p.name}` | `{self._values[p.name]!r}` | {p.label} |" for p in self._spec.params
        )
        return f"| parameter | value | meaning |\n|---|---|---|\n{rows}\n\n(from {self.surface})"


@dataclass(frozen=True)
class ParameterSpec:
    """The declared parameters of one notebook template (types, choices, labels)."""

    notebook: str
    params: tuple[Param, ...]
    cross_checks: tuple[Callable[[dict[str, Any]], None], ...] = field(default=())

    def __post_init__(self) -> None:
        names = [p.name for p in self.params]
        dupes = {n for n in names if names.count(n) > 1}
        if dupes:
            raise ValueError(f"{self.notebook}: parameters declared twice: {sorted(dupes)}")

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def get(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise self.unknown([name])

    def unknown(self, names: Iterable[str]) -> ParameterError:
        parts = []
        for name in sorted(names):
            close = difflib.get_close_matches(name, self.names, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            if _SECRET_NAME.search(name):
                hint = (
                    " (secrets are never parameters: set DATABRICKS_TOKEN in the environment, "
                    "use a ~/.databrickscfg profile, or the notebook context on Databricks)"
                )
            parts.append(f"{name!r}{hint}")
        return ParameterError(
            f"{self.notebook}: unknown parameter(s) {', '.join(parts)}. "
            f"Declared parameters: {', '.join(self.names)}."
        )

    def validate(self, values: Mapping[str, Any], *, require_all: bool = True) -> dict[str, Any]:
        """Convert and check ``values`` (typed or strings); all errors reported at once."""
        unknown = set(values) - set(self.names)
        if unknown:
            raise self.unknown(unknown)
        missing = [n for n in self.names if n not in values]
        if require_all and missing:
            raise ParameterError(
                f"{self.notebook}: missing parameter(s) {', '.join(missing)}: the notebook's "
                "parameters cell must define every declared parameter."
            )
        typed: dict[str, Any] = {}
        errors: list[str] = []
        for p in self.params:
            if p.name not in values:
                continue
            try:
                typed[p.name] = p.convert(values[p.name])
            except ParameterError as exc:
                errors.append(str(exc))
        if not errors:
            for check in self.cross_checks:
                try:
                    check(typed)
                except (ValueError, ParameterError) as exc:
                    errors.append(str(exc))
        if errors:
            raise ParameterError("\n".join(errors) if len(errors) > 1 else errors[0])
        return typed


# ------------------------------------------------------------------ surfaces


def _ipython() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def databricks_dbutils(namespace: Mapping[str, Any] | None = None) -> Any:
    """``dbutils`` as Databricks injects it into notebooks, or None off Databricks.

    Never ``from databricks.sdk.runtime import dbutils``: off a cluster that blocks for
    minutes or fails without credentials. Offline, the job rehearsal's faithful
    ``ptdeploy.templates.dbutils.OfflineDbutils`` counts as Databricks' own.
    """
    dbutils = (namespace or {}).get("dbutils")
    if dbutils is None:
        shell = _ipython()
        dbutils = getattr(shell, "user_ns", {}).get("dbutils") if shell else None
    if "DATABRICKS_RUNTIME_VERSION" in os.environ or getattr(dbutils, "offline", False) is True:
        return dbutils
    return None


def injected_parameter_names(namespace: Mapping[str, Any]) -> set[str]:
    """Names papermill injected, read from the kernel's cell history (``In``).

    papermill warns about unknown ``-p`` names but injects them anyway; this lets
    ``resolve`` refuse them.
    """
    history = namespace.get("In")
    if not isinstance(history, list):
        shell = _ipython()
        history = getattr(shell, "user_ns", {}).get("In") if shell else None
    if not isinstance(history, list):
        return set()
    names: set[str] = set()
    for source in history:
        if isinstance(source, str) and source.lstrip().startswith(_PAPERMILL_MARK):
            try:
                tree = ast.parse(source)
            except SyntaxError:
                continue
            for node in tree.body:
                if isinstance(node, ast.Assign):
                    names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return names


# Forms shown in this kernel, by notebook: re-running the parameters call shows the same
# form again, keeping the user's edits (as Databricks widgets do).
_FORMS: dict[str, Any] = {}


def _ipywidgets_surface(spec: ParameterSpec, seeds: dict[str, str]) -> Any:
    """Show the notebook's parameters form (``ptdeploy.templates.widget_form``) or None outside
    a Jupyter kernel. A widget keeps the user's edit across re-runs of the cell; if the
    seed itself changed since (the parameters cell was edited), the new value wins.
    """
    shell = _ipython()
    if shell is None or type(shell).__name__ != "ZMQInteractiveShell":
        return None
    try:
        from IPython.display import display

        from ptdeploy.templates.widget_form import ParameterForm
    except ImportError:
        return None
    form = _FORMS.get(spec.notebook)
    if form is None or form.spec is not spec:
        form = _FORMS[spec.notebook] = ParameterForm(spec, seeds)
    else:
        form.reseed(seeds)
    form.refresh()
    display(form.widget)
    return form


def lab_seeds(spec: ParameterSpec, typed: dict[str, Any]) -> dict[str, Any]:
    """``typed`` (the parameters cell), overlaid with what ``ptdeploy lab --parameters
    TARGET -p NAME VALUE`` asked for: ``parameters/<notebook>/TARGET.yaml``, then the
    overrides this notebook declares. Checked by the spec like any other surface.
    """
    import json

    target = os.environ.get("PTDEPLOY_LAB_PARAMETERS")
    overrides_json = os.environ.get("PTDEPLOY_LAB_OVERRIDES")
    if not target and not overrides_json:
        return typed
    from ptdeploy.state import parameters_dir

    values: dict[str, Any] = {}
    if target:
        path = parameters_dir() / spec.notebook / f"{target}.yaml"
        if path.is_file():
            values.update(load_parameters_file(path))
    overrides = json.loads(overrides_json) if overrides_json else {}
    values.update({k: v for k, v in overrides.items() if k in spec.names})
    return {**typed, **spec.validate({**typed, **values})}


def _databricks_surface(
    spec: ParameterSpec, seeds: dict[str, str], dbutils: Any
) -> tuple[dict[str, str], set[str]]:
    """Create ``dbutils.widgets`` (job base_parameters land there) and read them back."""
    for p in spec.params:
        label = p.label or p.name
        if p.kind in ("choice", "bool"):
            choices = list(p.choices) if p.kind == "choice" else ["true", "false"]
            if seeds[p.name] not in choices:
                choices = [seeds[p.name], *choices]
            dbutils.widgets.dropdown(p.name, seeds[p.name], choices, label)
        else:
            dbutils.widgets.text(p.name, seeds[p.name], label)
    values = {p.name: dbutils.widgets.get(p.name) for p in spec.params}
    extra: set[str] = set()
    get_all = getattr(dbutils.widgets, "getAll", None)
    if callable(get_all):
        try:
            extra = set(get_all()) - set(spec.names)
        except Exception:  # older runtimes: no way to list job parameters
            extra = set()
    return values, extra


def resolve(spec: ParameterSpec, namespace: Mapping[str, Any] | None = None) -> Params:
    """Typed, validated parameters of a notebook (see the module docstring).

    ``namespace`` is the notebook's ``globals()``: the parameters cell and papermill's
    injected cell have defined every declared name there.
    """
    namespace = dict(namespace or {})
    injected = injected_parameter_names(namespace)
    unknown = injected - set(spec.names)
    if unknown:
        raise spec.unknown(unknown)
    missing = [n for n in spec.names if n not in namespace]
    if missing:
        raise ParameterError(
            f"{spec.notebook}: the parameters cell does not define {', '.join(missing)}; "
            "run the cell tagged 'parameters' first."
        )
    cell_values = {n: namespace[n] for n in spec.names}
    # Check the cell's own values first: a typo in the cell must fail even under widgets.
    typed = spec.validate(cell_values)
    seeds = {p.name: p.widget_text(typed[p.name]) for p in spec.params}

    dbutils = databricks_dbutils(namespace)
    if dbutils is not None:
        values, extra = _databricks_surface(spec, seeds, dbutils)
        if extra:
            raise spec.unknown(extra)
        return Params(spec, spec.validate(values), "databricks-widgets")
    if not injected and os.environ.get("PTDEPLOY_HEADLESS") != "1":
        seeded = lab_seeds(spec, typed)
        form = _ipywidgets_surface(
            spec, {p.name: p.widget_text(seeded[p.name]) for p in spec.params}
        )
        if form is not None:
            params = Params(spec, spec.validate(form.values()), "ipywidgets")
            form.bind(params)  # later edits update ``params`` (or make it refuse to be read)
            return params
    surface = "papermill" if injected or os.environ.get("PTDEPLOY_HEADLESS") == "1" else "python"
    return Params(spec, typed, surface)


def load_parameters_file(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ParameterError(f"parameters file {path} does not exist")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ParameterError(f"parameters file {path} must be a mapping of name: value")
    return data
