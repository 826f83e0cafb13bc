"""The ``## Search space`` section of ``docs/config.md`` (:mod:`cnn_ray.config_reference`).

Rendered from what the space parser itself uses: the distribution table
(:data:`cnn_ray.tune.space.DISTRIBUTIONS`), the keys a sweep fixes
(:data:`cnn_ray.tune.space_parse.FIXED_KEYS`, :data:`~cnn_ray.tune.space_parse.SEARCHABLE_DATA_KEYS`)
and the model registry (the families and the knobs each accepts). No Ray.
"""

from __future__ import annotations

import json

from cnn_ray.config_reference_text import github_anchor, md_escape


def _families() -> list[tuple[str, dict]]:
    """The families cnn_ray registers (not ones a caller or test added) with their knobs that
    are ``model.*`` keys, mapped to the family defaults."""
    from cnn_ray.config import ModelConfig
    from cnn_ray.models import list_models, model_knobs, registry

    out = []
    for name in list_models():
        # registry._REGISTRY is read only: the factory's module tells a built-in family.
        if not registry._REGISTRY[name].__module__.startswith("cnn_ray."):
            continue
        knobs = {k: v for k, v in model_knobs(name).items() if k in ModelConfig.model_fields}
        out.append((name, knobs))
    return out


def _distribution_table() -> list[str]:
    from cnn_ray.tune.space import DISTRIBUTIONS

    lines = ["| Kind | Arguments | Meaning | Example | Optuna |", "|---|---|---|---|---|"]
    for d in DISTRIBUTIONS:
        optuna = ("yes: " if d.optuna else "no: ") + d.optuna_note
        lines.append(f"| `{d.kind}` | `{d.args}` | {md_escape(d.meaning, cell=True)} | "
                     f"`{md_escape(d.example, cell=True)}` | {md_escape(optuna, cell=True)} |")
    return lines


def _fixed_table() -> list[str]:
    from cnn_ray.tune.space import FAMILY_KEY
    from cnn_ray.tune.space_parse import FIXED_KEYS, SEARCHABLE_DATA_KEYS

    lines = ["| Key | Why it cannot be searched |", "|---|---|"]
    for prefix, reason in FIXED_KEYS.items():
        if prefix.endswith("."):
            free = [k for k in SEARCHABLE_DATA_KEYS if k.startswith(prefix)]
            key = f"`{prefix}*`" + (" except " + ", ".join(f"`{k}`" for k in free) if free
                                    else "")
        else:
            key = f"`{prefix}`"
        lines.append(f"| {key} | {md_escape(reason, cell=True)} |")
    lines += [
        "| a section (`optim.ema`, `augment.hflip`, ...) | it is a config section, not a "
        "value: search its keys (`optim.ema.decay`) |",
        f"| `model.name` together with `{FAMILY_KEY}` | the family block sets `model.name` |",
        f"| `model.name`, `{FAMILY_KEY}` inside a family | the family sets `model.name` |",
    ]
    return lines


def search_space_section() -> list[str]:
    """The ``## Search space`` lines: distributions, the conditional architecture form, the
    model families and their knobs, and the keys a sweep does not search."""
    from cnn_ray.tune.space import FAMILY_KEY

    fam_rows = ["| Family (`model.name`) | Knobs it accepts (family default) |", "|---|---|"]
    for name, knobs in _families():
        text = ", ".join(f"`model.{k}` ({json.dumps(v)})" for k, v in knobs.items()) or "none"
        fam_rows.append(f"| `{name}` | {text} |")
    section, family = "Search space", "Conditional architecture"
    return [
        f"## {section}",
        "",
        "A sweep file's `space` maps config keys to what each trial gets: a distribution, "
        "written as a one-key mapping `{kind: args}`, or any other value, a constant every "
        "trial gets (`optim.label_smoothing: 0.1`). Keys are dotted (`optim.lr: ...`) or "
        "nested (`optim: {lr: ...}`); both forms flatten to dotted keys, and a key given in "
        "both forms is an error. Every key must be a leaf key of the sections above; every "
        "choice/grid value and both ends of every range must pass the config's validation on "
        "top of `base`, checked before anything runs. Errors name the key as `space.<key>`.",
        "",
        "### Distributions",
        "",
        *_distribution_table(),
        "",
        "Searchers (`searcher.kind`): `random` draws `sweep.num_samples` configurations, each "
        "crossed with every `grid` value; `grid` also crosses every `choice` value and every "
        "family; `optuna` asks Optuna TPE for `sweep.num_samples` trials (distributions with "
        "an Optuna form only).",
        "",
        f"### {family}",
        "",
        f"`model: {{family: {{<name>: {{<key>: <dist>}}}}}}` (dotted: `{FAMILY_KEY}`) picks a "
        "model family first, then samples the keys listed under that family only; the family "
        "is the trial's `model.name`. A knob one family accepts and another does not "
        "(`model.kernel_size`) can so be searched without producing an invalid model.",
        "",
        "```yaml",
        "space:",
        "  optim.lr: {loguniform: [0.01, 1.0]}",
        "  model:",
        "    family:",
        "      resnet9:",
        "        model.width_mult: {choice: [0.5, 1.0]}",
        "        model.depth: {randint: [1, 2]}",
        "      mobilenet_v2:",
        "        model.width_mult: {choice: [0.5, 1.0]}",
        "      simple_cnn: {}   # no keys: the family's defaults",
        "```",
        "",
        "- every family is a registered model name (table below);",
        "- a model knob searched outside the family block, or set in `base`, must be accepted "
        "by every family the space can meet;",
        "- a key searched inside a family may not also be searched outside it;",
        "- `model.name` cannot be searched together with the family block, nor appear inside a "
        "family;",
        "- with `searcher.kind: optuna` a family's key is suggested under `<key>@<family>`, so "
        "each family keeps its own distribution.",
        "",
        "### Model families",
        "",
        f"The families a space (or `model.name`) can use and the `model.*` knobs each accepts "
        f"(see [{family}](#{github_anchor(family)})); a knob a family does not accept is an error "
        "naming it.",
        "",
        *fam_rows,
        "",
        "### Keys that cannot be searched",
        "",
        "A trial may not change what the whole sweep shares:",
        "",
        *_fixed_table(),
        "",
    ]


__all__ = ["search_space_section"]
