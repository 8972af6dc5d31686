"""Readers and writers of the official dataset formats.

Every reader validates as it reads and raises :class:`~copa.data.formats.records.FormatError`
naming the file, the record and the field; writers emit the official layout so that the
synthetic world exercises exactly the code that serves real data.
"""

from copa.data.formats.records import Box, FormatError, Image

__all__ = ["Box", "FormatError", "Image"]
