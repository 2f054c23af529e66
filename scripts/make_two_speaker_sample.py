"""Generate samples/two_speakers.ogg and its reference turns with espeak-ng (apt-get install espeak-ng).

    python -m scripts.make_two_speaker_sample

Two clearly different voices (en-us+m3, en-us+f3) alternate with 0.6 s pauses; the JSON holds each turn's
speaker, start, end and text, measured from the synthesized audio. Encoded as Opus to stay small.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np

from audio import SAMPLE_RATE, decode_audio

OUT = Path(__file__).resolve().parent.parent / "samples"
VOICES = {"A": "en-us+m3", "B": "en-us+f3"}
TURNS = [
    ("A", "Good morning, thanks for joining the call today."),
    ("B", "Happy to be here. Shall we start with the budget review?"),
    ("A", "Yes. The hardware costs came in slightly higher than we planned."),
    ("B", "How much higher, roughly?"),
    ("A", "About twelve percent, mostly because of the new storage servers."),
    ("B", "That is fine if the migration finishes on schedule."),
]
GAP_S = 0.6


def speak(text: str, voice: str) -> np.ndarray:
    wav = subprocess.run(["espeak-ng", "-v", voice, "-s", "150", "--stdout", text], check=True,
                         capture_output=True).stdout
    audio = decode_audio(wav)
    speech = np.flatnonzero(np.abs(audio) > 0.01)
    return audio[speech[0]:speech[-1] + 1]  # tight reference times


def main() -> None:
    import av

    pieces, turns, clock = [np.zeros(int(0.5 * SAMPLE_RATE), np.float32)], [], 0.5
    for speaker, text in TURNS:
        speech = speak(text, VOICES[speaker])
        turns.append({"speaker": speaker, "start": round(clock, 3), "end": round(clock + len(speech) / SAMPLE_RATE, 3),
                      "text": text})
        pieces += [speech, np.zeros(int(GAP_S * SAMPLE_RATE), np.float32)]
        clock += len(speech) / SAMPLE_RATE + GAP_S
    audio = np.concatenate(pieces)
    audio = (0.8 * audio / np.abs(audio).max()).astype(np.float32)
    with av.open(str(OUT / "two_speakers.ogg"), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        stream.bit_rate = 32000
        frame = av.AudioFrame.from_ndarray(audio[None, :], format="flt", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        resampler = av.AudioResampler(format=stream.format.name, layout="mono", rate=48000, frame_size=960)
        for chunk in resampler.resample(frame) + resampler.resample(None):
            container.mux(stream.encode(chunk))
        container.mux(stream.encode(None))
    (OUT / "two_speakers.json").write_text(json.dumps({"voices": VOICES, "turns": turns}, indent=1) + "\n")
    print(f"{OUT / 'two_speakers.ogg'}: {len(audio) / SAMPLE_RATE:.1f} s, {len(turns)} turns")


if __name__ == "__main__":
    main()
