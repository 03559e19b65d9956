"""A ``.eae`` stream as a source of the frame loop: its frame records, in order, after the whole stream was
checked (every record's CRC) by the caller."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from edge_runtime.bitstream import FrameRecord, iter_frames, read_frame
from edge_runtime.sources import Source


@dataclass(frozen=True)
class RecordFrame:
    """One record of a stream, shaped like a :class:`~edge_runtime.sources.Frame` for the loop."""

    index: int
    timestamp: float
    record: FrameRecord
    name: str = ""


class StreamSource(Source):
    """Records ``indices`` of the stream ``data``; ``fps`` only sets the timestamps."""

    def __init__(self, data: Any, indices: Sequence[int], description: str, fps: float = 25.0):
        super().__init__()
        self.data = data
        self.indices = list(indices)
        self.description = description
        self.fps = fps
        self.files: list[str] = []

    def __iter__(self) -> Iterator[RecordFrame]:
        every = len(self.indices) > 1 and self.indices == list(range(len(self.indices)))
        records = iter_frames(self.data) if every else (read_frame(self.data, i) for i in self.indices)
        for i, rec in zip(self.indices, records, strict=False):
            self.stats.frames_read += 1
            self.stats.frames_delivered += 1
            yield RecordFrame(i, i / self.fps, rec)
