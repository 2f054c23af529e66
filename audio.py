"""Decode request audio once: base64 or bytes of any container FFmpeg reads, to 16 kHz mono float32."""

from __future__ import annotations

import base64
import binascii
import io
import re

import av
import numpy as np

from errors import RequestError

SAMPLE_RATE = 16000
MIN_SECONDS = 0.1
# MediaRecorder + readAsDataURL write parameters before ";base64," (data:audio/webm;codecs=opus;base64,...)
_DATA_URI = re.compile(r"^data:[^,]*;base64,", re.IGNORECASE)


def payload_bytes(inputs: object) -> bytes:
    """The audio bytes of a request's `inputs`: raw bytes, or a base64 string (a data: URI prefix is allowed, and
    line breaks as the `base64` command and `base64.encodebytes` write them)."""
    if isinstance(inputs, (bytes, bytearray, memoryview)):
        data = bytes(inputs)
    elif isinstance(inputs, str):
        text = "".join(_DATA_URI.sub("", inputs.strip(), count=1).split())
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise RequestError("inputs is not valid base64", field="inputs") from None
    elif inputs is None:
        raise RequestError("inputs is missing: send base64 audio in 'inputs' or an audio/* body", field="inputs")
    else:
        raise RequestError(f"inputs must be base64 text or bytes, not {type(inputs).__name__}", field="inputs")
    if not data:
        raise RequestError("audio is empty", field="inputs")
    return data


def decode_audio(data: bytes, audio_format: str = "auto", sampling_rate: int = SAMPLE_RATE,
                 max_seconds: float | None = None) -> np.ndarray:
    """Decode to 16 kHz mono float32; the container's own rate wins, `sampling_rate` is for raw PCM only."""
    if audio_format == "auto":
        audio = _decode_container(data, max_seconds)
    else:
        audio = _decode_pcm(data, audio_format, sampling_rate, max_seconds)
    seconds = len(audio) / SAMPLE_RATE
    if max_seconds is not None and seconds > max_seconds:
        raise _too_long(seconds, max_seconds)
    if len(audio) == 0:
        raise RequestError("audio is empty: the file holds no samples", field="inputs")
    if not np.isfinite(audio).all():
        raise RequestError("audio holds NaN or infinite samples", field="inputs")
    if seconds < MIN_SECONDS:
        raise RequestError(f"audio is too short: {seconds:.3f} s, at least {MIN_SECONDS} s", field="inputs")
    return audio


def _too_long(seconds: float, max_seconds: float) -> RequestError:
    return RequestError(f"audio is too long: {seconds:.0f} s, at most {max_seconds:.0f} s", status=413, field="inputs")


def _resampler() -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)


def _decode_container(data: bytes, max_seconds: float | None) -> np.ndarray:
    try:
        with av.open(io.BytesIO(data), mode="r", metadata_errors="ignore") as container:
            if not container.streams.audio:
                raise RequestError("the file has no audio stream", status=415, field="inputs")
            stream = container.streams.audio[0]
            if max_seconds is not None and container.duration and container.duration / av.time_base > max_seconds + 1:
                raise _too_long(container.duration / av.time_base, max_seconds)  # refuse before decoding
            resampler, pieces, total = _resampler(), [], 0
            limit = None if max_seconds is None else int((max_seconds + 1) * SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(_mono(frame)):
                    pieces.append(out.to_ndarray()[0])
                    total += out.samples
                if limit is not None and total > limit:
                    raise _too_long(total / SAMPLE_RATE, max_seconds)  # a tiny file can expand to hours
            pieces.extend(out.to_ndarray()[0] for out in resampler.resample(None))
    except RequestError:
        raise
    except (av.FFmpegError, EOFError, ValueError, IndexError) as error:
        raise RequestError(f"could not decode audio: not a supported audio file ({type(error).__name__})",
                           status=415, field="inputs") from None
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)


_FULL_SCALE = {np.dtype(np.uint8): 128.0, np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2.0**31,
               np.dtype(np.int64): 2.0**63}


def _mono(frame: av.AudioFrame) -> av.AudioFrame:
    """A mono float frame: the average of the channels, for any channel count (FFmpeg's resampler has no
    default layout for 9, 11, 13, 15, 17-23 or 25-32 channels and refuses them)."""
    samples = frame.to_ndarray()
    channels = frame.layout.nb_channels
    if not frame.format.is_planar:  # interleaved: (1, samples * channels)
        samples = samples.reshape(-1, channels).T
    scale = _FULL_SCALE.get(samples.dtype)
    if scale is None:
        mono = samples.astype(np.float32).mean(axis=0)
    else:
        mono = (samples.astype(np.float32) - (128.0 if samples.dtype == np.uint8 else 0.0)).mean(axis=0) / scale
    out = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, :], np.float32), format="flt", layout="mono")
    out.sample_rate = frame.sample_rate  # no pts: resample by sample count, broken timestamps must not drop audio
    return out


def _decode_pcm(data: bytes, audio_format: str, sampling_rate: int, max_seconds: float | None = None) -> np.ndarray:
    dtype, av_format = {"pcm_s16le": ("<i2", "s16"), "pcm_f32le": ("<f4", "flt")}[audio_format]
    width = np.dtype(dtype).itemsize
    if len(data) % width:
        raise RequestError(f"raw {audio_format} audio must be a whole number of {width}-byte samples", field="inputs")
    samples = np.frombuffer(data, dtype=dtype)
    if max_seconds is not None and len(samples) / sampling_rate > max_seconds:
        raise _too_long(len(samples) / sampling_rate, max_seconds)  # before resampling: 1 kHz grows 16x, + copies
    if len(samples) == 0:
        return np.zeros(0, np.float32)
    if sampling_rate == SAMPLE_RATE:
        scale = 32768.0 if audio_format == "pcm_s16le" else 1.0
        return (samples.astype(np.float32) / scale)
    frame = av.AudioFrame.from_ndarray(samples.astype(samples.dtype.newbyteorder("="))[None, :], format=av_format,
                                       layout="mono")
    frame.sample_rate = sampling_rate
    resampler = _resampler()
    pieces = [out.to_ndarray()[0] for out in resampler.resample(frame) + resampler.resample(None)]
    # a few samples can resample to nothing: decode_audio then answers "audio is empty"
    return np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
