"""The studio's HTTP request bodies: the settings a request may carry (the rows of the CLI's option table that
`llm-dit generate` takes, named by their config keys), its input files (workspace paths), and what the page needs to
draw a control for each setting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from ..config.options import OPTIONS, Option, choices
from ..config.settings import Config
from ..sweep.spec import PRESETS

SETTING_TAGS = ("generation", "conditioning")  # the settings `llm-dit generate` takes, in the table's order


LORAS = "generation.loras"
"""The setting whose items `FILE[:SCALE]` name files: each FILE is a workspace path (`Studio.loras`)."""


def setting_options() -> list[Option]:
    """The table rows a request's `settings` may carry: config keys of `llm-dit generate`'s setting tags, once."""
    seen: dict[str, Option] = {}
    for o in OPTIONS:
        if o.config_key and any(t in o.tags for t in SETTING_TAGS) and o.key not in seen:
            seen[o.key] = o
    return list(seen.values())


def input_options() -> list[Option]:
    """The table rows of `llm-dit generate`'s input files (`tasks.generate_file`'s arguments): workspace paths."""
    return [o for o in OPTIONS if "inputs" in o.tags and not o.config_key]


def config_field(key: str):
    """The pydantic field of the config key `key` (`section.name`)."""
    section, _, name = key.partition(".")
    return Config.model_fields[section].annotation.model_fields[name]


def settings_model() -> type[BaseModel]:
    """`Settings`: one optional field per `setting_options` row, named (alias) by its config key and typed by the
    config's field, described by the CLI's help. Values are validated by the config itself (`with_overrides`)."""
    fields: dict[str, Any] = {
        o.key.replace(".", "__"): (config_field(o.key).annotation | None, Field(None, alias=o.key, description=o.help))
        for o in setting_options()
    }
    return create_model("Settings", __config__=ConfigDict(extra="forbid", populate_by_name=True), **fields)


Settings = settings_model()


InputFiles = create_model(
    "InputFiles",
    __config__=ConfigDict(extra="forbid"),
    **{o.key: (str | None, Field(None, description=f"{o.help} A path in the workspace.")) for o in input_options()},
)


class GenerateRequest(InputFiles):  # type: ignore[misc, valid-type]
    """One image: the prompt, input files (workspace paths, as `llm-dit generate`'s) and settings; `draft` for an
    interactive draft (the page's live re-render), written without fsync until it is pinned."""

    prompt: str = Field(min_length=1)
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]
    draft: bool = Field(False, description="An interactive draft: its PNG and record are written atomically but "
                        "not fsynced, so it is shown sooner; pinning it (POST /api/jobs/ID/pin) makes it durable. "
                        "A crash can lose unpinned drafts.")  # fmt: skip


class ExtractRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="Reference image, a path in the workspace.")
    text: str | None = Field(None, description="Text after the image (the prompt).")
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]


class InspectRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="Reference image, a path in the workspace.")
    prompt: str = Field(min_length=1)
    layers: list[int] | None = Field(None, description="Hidden layers (default: as `llm-dit inspect`).")
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]


class SweepRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", description="Folder under sweeps/.")
    prompts: list[str] = Field(min_length=1)
    images: list[str] = Field(default_factory=list, description="Reference images, paths in the workspace.")
    preset: str | None = Field(None, description=f"A built-in sweep: {', '.join(PRESETS)}.")
    axes: dict[str, list[Any]] = Field(default_factory=dict, description="Config key -> values to vary.")
    settings: Settings = Field(default_factory=Settings)  # type: ignore[valid-type]
    neutral_image: str | None = Field(None, description="The unstyled reference of style_delta runs, a workspace path.")
    negative_image: str | None = Field(None, description="CFG's negative image of every reference run (needs "
                                       "generation.guidance > 0), a workspace path.")  # fmt: skip
    seeds: list[int] = Field(default_factory=lambda: [0])
    baseline: bool = True
    resume: bool = Field(False, description="Finish the sweep in sweeps/NAME: its finished runs are kept, its "
                         "failed ones retried; a different plan is refused.")  # fmt: skip


def given_settings(settings: BaseModel) -> dict[str, Any]:
    """`{config key: value}` of the settings a request set."""
    return settings.model_dump(by_alias=True, exclude_unset=True)


def option_info(o: Option, config: Config) -> dict[str, Any]:
    """What the page needs to draw a control for a setting: the table row, its type, valid values and bounds."""
    f = config_field(o.key)
    bounds = {
        name: getattr(m, name)
        for m in f.metadata
        for name in ("ge", "gt", "le", "lt")
        if getattr(m, name, None) is not None
    }
    value = config.flat()[o.key]
    kind = {int: "integer", float: "number", bool: "boolean"}.get(o.kind, "string")
    if o.many:  # how the page sends a list option's items: a dict (KEY=VALUE items), a joined string, or a list
        kind = {dict: "pairs", ",".join: "joined"}.get(o.join, f"list[{kind}]")  # type: ignore[call-overload]
    return {
        "key": o.key,
        "flags": list(o.flags),
        "help": o.help,
        "group": next(t for t in SETTING_TAGS if t in o.tags),
        "type": kind,
        "choices": list(choices(o.key)),
        "bounds": bounds,
        "value": value,
        "path": o.kind is Path,
        "sweep_axis": o.axis,
    }
