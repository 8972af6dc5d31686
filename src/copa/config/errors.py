"""The error of a malformed parameter, and the file a message names (where the key was set)."""

from __future__ import annotations

from typing import Mapping


class UserError(Exception):
    """An error in what the user gave (a file, a value, a run) rather than in the code: the CLI reports
    it as its one-line message with exit status 2 (``--debug``: the traceback). Its own module is
    free of torch, so that the CLI can catch it without importing torch."""


class ParamsError(ValueError):
    """A parameter file or override is malformed; the message names the source and key."""


def source_of(dotted: str, provenance: Mapping[str, str]) -> str:
    """The file that set ``dotted`` or, for a missing key, the file of its nearest sibling."""
    if dotted in provenance:
        return provenance[dotted]
    listed = dotted.split("[", 1)[0]  # an item of a list value: the list's file
    if listed in provenance:
        return provenance[listed]
    prefix = dotted.rsplit(".", 1)[0] + "." if "." in dotted else ""
    sources = sorted({src for key, src in provenance.items() if key.startswith(prefix)})
    return " / ".join(sources) or "params"
