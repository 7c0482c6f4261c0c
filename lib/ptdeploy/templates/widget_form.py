"""The parameters of a template as an ipywidgets form, in local Jupyter.

One row per declared parameter: the control its type calls for, labelled from the spec,
with the spec's check run on every change and its message shown right next to the
control — the same text ``ptdeploy run -p NAME VALUE`` prints, because the value goes
through the same :meth:`Param.convert` in its string form. Cross-parameter checks
(``min_chunks <= max_chunks``) show under the form.

The form is bound to the notebook's :class:`~ptdeploy.templates.parameters.Params`: a valid edit
updates ``p`` at once, so running the following cells uses the new value; an invalid one
makes ``p`` refuse to be read (``ParameterError`` with that message), so a bad value
never reaches the library.

| parameter kind | control |
|---|---|
| ``choice``, ``bool`` | ``Dropdown`` |
| ``int`` / ``float`` | ``IntText`` / ``FloatText`` — not the ``Bounded*`` kind, which would silently clamp an out-of-range value instead of saying why it is refused |
| ``str``, optional numbers | ``Text`` with a placeholder saying what is valid |
"""

from __future__ import annotations

import html
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ptdeploy.errors import ParameterError

if TYPE_CHECKING:
    from ptdeploy.templates.parameters import Param, ParameterSpec, Params

ERROR_CLASS = "ptdeploy-param-error"  # the browser test finds the messages by it
HELP_STYLE = "color: var(--jp-ui-font-color2, #666); font-size: 90%"
ERROR_STYLE = "color: var(--jp-error-color1, #d32f2f)"


def control_for(p: Param, seed: str) -> Any:
    """The ipywidgets control for one parameter, showing ``seed`` (its string form)."""
    import ipywidgets as widgets

    desc = p.label or p.name
    common = {"description": desc, "tooltip": f"{p.name}: {p.valid_text()}"}
    if p.kind in ("choice", "bool"):
        choices = list(p.choices) if p.kind == "choice" else ["true", "false"]
        if seed not in choices:  # a cell value the spec refuses is caught before this
            choices = [seed, *choices]
        control: Any = widgets.Dropdown(options=choices, value=seed, **common)
    elif p.kind == "int" and not p.optional:
        control = widgets.IntText(value=int(seed), **common)
    elif p.kind == "float" and not p.optional:
        control = widgets.FloatText(value=float(seed), **common)
    else:
        control = widgets.Text(value=seed, placeholder=p.valid_text(), **common)
    control.style.description_width = "22em"  # the spec's longest labels, unclipped
    control.layout.width = "42em"
    return control


class ParameterForm:
    """Widgets for one spec, kept across re-runs of the notebook's parameters call."""

    def __init__(self, spec: ParameterSpec, seeds: Mapping[str, str]) -> None:
        import ipywidgets as widgets

        self.spec = spec
        self.seeds: dict[str, str] = dict(seeds)
        self.controls: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.cross_message = widgets.HTML()
        self._bound: Params | None = None
        self.rows: dict[str, Any] = {}
        for p in spec.params:
            control = control_for(p, seeds[p.name])
            message = widgets.HTML(self._help_html(p))
            control.observe(self._on_change, names="value")
            self.controls[p.name] = control
            self.messages[p.name] = message
            self.rows[p.name] = widgets.HBox([control, message])
        self.widget = widgets.VBox([*self.rows.values(), self.cross_message])
        self.widget.add_class("ptdeploy-parameters")

    @staticmethod
    def _help_html(p: Param) -> str:
        text = f"<code>{p.name}</code> — {html.escape(p.valid_text())}"
        return f'<span style="{HELP_STYLE}">{text}</span>'

    def reseed(self, seeds: Mapping[str, str]) -> None:
        """A seed that changed (the parameters cell was edited) replaces the user's edit."""
        for p in self.spec.params:
            if seeds[p.name] != self.seeds[p.name]:
                self.controls[p.name].close()
                control = control_for(p, seeds[p.name])
                control.observe(self._on_change, names="value")
                self.controls[p.name] = control
                self.rows[p.name].children = (control, self.messages[p.name])
        self.seeds = dict(seeds)
        self.refresh()

    def values(self) -> dict[str, str]:
        """The controls' values in their string form, as a widget or ``-p`` gives them."""
        return {p.name: p.widget_text(self.controls[p.name].value) for p in self.spec.params}

    def refresh(self) -> dict[str, Any] | None:
        """Check every value, show each message next to its control; typed values or None."""
        values = self.values()
        typed: dict[str, Any] = {}
        failed: list[str] = []
        for p in self.spec.params:
            try:
                typed[p.name] = p.convert(values[p.name])
            except ParameterError as exc:
                failed.append(str(exc))
                self.messages[p.name].value = _error_html(str(exc))
            else:
                self.messages[p.name].value = self._help_html(p)
        if not failed:
            try:
                typed = self.spec.validate(values)  # the cross checks, once each value is fine
            except ParameterError as exc:
                failed.append(str(exc))
                self.cross_message.value = _error_html(str(exc))
            else:
                self.cross_message.value = ""
        else:
            self.cross_message.value = ""
        error = "\n".join(failed) if failed else None
        if self._bound is not None:
            self._bound._update(None if error else typed, error)
        return None if error else typed

    def bind(self, params: Params) -> None:
        self._bound = params

    def _on_change(self, _change: Mapping[str, Any]) -> None:
        self.refresh()


def _error_html(message: str) -> str:
    return f'<span class="{ERROR_CLASS}" style="{ERROR_STYLE}">{html.escape(message)}</span>'
