"""Subtitle shape of a transcript: the CLI's JSON output rendered as SRT unshaped and with shaping options.

    python -m benchmarks.subtitle_stats out/talk.json --max_line_width 42 --max_line_count 2

Prints, for each rendering, the cues, the lines over the width (and over twice it), the longest line, the most lines
in a cue and the longest cue. The JSON needs word timestamps for shaped cues to be cut at word times (the CLI asks
for them whenever a shaping option is given).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import srt

from formats import SubtitleOptions, to_srt
from transcript import Transcript, Word


def transcript_with_words(response: dict) -> Transcript:
    """The contract's JSON as a Transcript, its top-level words put back into the chunks they fall in."""
    transcript = Transcript.from_response(response)
    words = [Word(w["start"], w["end"], w["text"], w.get("speaker")) for w in response.get("words") or []]
    for segment in transcript.segments:
        segment.words = [w for w in words if segment.start <= w.start < segment.end or w.start == segment.start]
    return transcript


def shape(text: str, width: int) -> str:
    subtitles = list(srt.parse(text))
    lines = [line for s in subtitles for line in s.content.splitlines()]
    return (f"{len(subtitles)} cues, {sum(len(l) > width for l in lines)} of {len(lines)} lines over {width} "
            f"characters, {sum(len(l) > 2 * width for l in lines)} over {2 * width}, longest line "
            f"{max(map(len, lines), default=0)}, most lines in a cue "
            f"{max((len(s.content.splitlines()) for s in subtitles), default=0)}, longest cue "
            f"{max(((s.end - s.start).total_seconds() for s in subtitles), default=0):.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("json", type=Path, help="the CLI's JSON output (the endpoint response)")
    parser.add_argument("--max_line_width", type=int, default=42)
    parser.add_argument("--max_line_count", type=int, default=2)
    parser.add_argument("--max_cue_seconds", type=float)
    args = parser.parse_args()
    transcript = transcript_with_words(json.loads(args.json.read_text()))
    options = SubtitleOptions(max_line_width=args.max_line_width, max_line_count=args.max_line_count,
                              max_cue_seconds=args.max_cue_seconds)
    print(f"unshaped: {shape(to_srt(transcript), args.max_line_width)}")
    print(f"shaped ({options.model_dump(exclude_defaults=True)}): "
          f"{shape(to_srt(transcript, options), args.max_line_width)}")


if __name__ == "__main__":
    main()
