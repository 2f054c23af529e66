"""Real speaker models from PyPI packaged as pyannote.audio `Model`s, for the offline diarization default.

pyannote's own weights are gated on the hub. These stand in its `SpeakerDiarization` pipeline:
- `SileroSegmentation`: Silero VAD (MIT, `silero-vad` wheel) as a one-speaker powerset segmentation model;
  it finds speech but models neither overlap nor speaker change: changes come from clustering short chunks.
- `ResemblyzerEmbedding`: Resemblyzer's GE2E speaker encoder (Apache-2.0, `resemblyzer` wheel, weights only:
  the package's imports pull librosa/numba, so its 40-band mel front-end is redone with torchaudio).
Checkpoints of both load through `Model.from_pretrained`, so a local `config.yaml` names them like hub models.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("PYANNOTE_METRICS_ENABLED", "false")  # pyannote 4 sends telemetry unless told not to
warnings.filterwarnings("ignore", message=r"[\s\S]*torchcodec")  # we hand pyannote waveforms, never files

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchaudio  # noqa: E402
from pyannote.audio import Model  # noqa: E402
from pyannote.audio.core.task import Problem, Resolution, Specifications  # noqa: E402
from pyannote.audio.pipelines import SpeakerDiarization  # noqa: E402
from pyannote.audio.utils.signal import binarize  # noqa: E402
from pyannote.core import SlidingWindow, SlidingWindowFeature  # noqa: E402
from pyannote.pipeline.parameter import ParamDict, Uniform  # noqa: E402
from torch import nn  # noqa: E402

from audio import SAMPLE_RATE  # noqa: E402

_VAD_FRAME = 512  # samples per Silero frame at 16 kHz (32 ms)


class SileroSegmentation(Model):
    """Speech probability per 32 ms frame as log-probabilities of the powerset {silence, speaker#1}."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_channels: int = 1, task=None, duration: float = 2.0):
        super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
        self.save_hyperparameters("duration")
        from vad import load_vad_model

        object.__setattr__(self, "_vad", load_vad_model())  # TorchScript, outside the state dict
        self.specifications = Specifications(
            problem=Problem.MONO_LABEL_CLASSIFICATION, resolution=Resolution.FRAME, duration=duration,
            classes=["speaker#1"], powerset_max_classes=1, permutation_invariant=True)

    @property
    def dimension(self) -> int:
        return 2

    def num_frames(self, num_samples: int) -> int:
        return num_samples // _VAD_FRAME

    def receptive_field_size(self, num_frames: int = 1) -> int:
        return num_frames * _VAD_FRAME

    def receptive_field_center(self, frame: int = 0) -> int:
        return frame * _VAD_FRAME + _VAD_FRAME // 2

    @torch.inference_mode()
    def speech_probabilities(self, samples: torch.Tensor, streams: int = 32, warm_up: int = 16) -> np.ndarray:
        """Speech probability of every 32 ms frame of a whole recording (1-d samples), the VAD's state carried
        from frame to frame: the file is cut into `streams` parts run side by side as one batch, each part
        starting `warm_up` frames early so that no frame is scored by a VAD that has just been reset."""
        frames = max(1, -(-len(samples) // _VAD_FRAME))
        per_stream = -(-frames // streams)
        padded = F.pad(samples, (warm_up * _VAD_FRAME, streams * per_stream * _VAD_FRAME - len(samples)))
        framed = padded.reshape(-1, _VAD_FRAME)  # warm_up + streams * per_stream frames
        index = torch.arange(streams)[:, None] * per_stream + torch.arange(warm_up + per_stream)[None, :]
        batch = framed[index]  # (streams, warm_up + per_stream, 512): each stream with its warm-up frames
        self._vad.reset_states()
        probs = torch.stack([self._vad(batch[:, i], SAMPLE_RATE)[:, 0] for i in range(batch.shape[1])], dim=1)
        return probs[:, warm_up:].reshape(-1)[:frames].numpy()

    @torch.inference_mode()
    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        samples = waveforms[:, 0].cpu()
        self._vad.reset_states()
        probs = torch.stack([self._vad(samples[:, i * _VAD_FRAME:(i + 1) * _VAD_FRAME], SAMPLE_RATE)[:, 0]
                             for i in range(self.num_frames(samples.shape[1]))], dim=1).clamp(1e-6, 1 - 1e-6)
        return torch.stack([torch.log1p(-probs), torch.log(probs)], dim=-1).to(waveforms.device)


class ResemblyzerEmbedding(Model):
    """256-d GE2E utterance embeddings: 1.6 s partials at 1.3 per second, averaged and L2-normalised."""

    _PARTIAL, _HOP, _RATE, _COVERAGE, _TARGET_DBFS = 160, 160, 1.3, 0.75, -30.0

    def __init__(self, sample_rate: int = SAMPLE_RATE, num_channels: int = 1, task=None, min_speech: float = 0.4):
        super().__init__(sample_rate=sample_rate, num_channels=num_channels, task=task)
        self.save_hyperparameters("min_speech")
        self.lstm = nn.LSTM(40, 256, 3, batch_first=True)
        self.linear = nn.Linear(256, 256)
        self.mel = torchaudio.transforms.MelSpectrogram(
            sample_rate=SAMPLE_RATE, n_fft=400, hop_length=self._HOP, n_mels=40, power=2.0, center=True,
            pad_mode="constant", mel_scale="slaney", norm="slaney")
        self.load_state_dict(torch.load(resemblyzer_weights(), map_location="cpu")["model_state"], strict=False)
        self.specifications = Specifications(problem=Problem.REPRESENTATION, resolution=Resolution.CHUNK,
                                             duration=10.0)

    @property
    def dimension(self) -> int:
        return 256

    def _partials(self, wav: torch.Tensor) -> torch.Tensor:
        """Resemblyzer's 1.6 s mel partials of one utterance: (partials, 160, 40)."""
        rms_db = 10 * torch.log10(torch.mean(wav ** 2) + 1e-12)
        if rms_db < self._TARGET_DBFS:  # resemblyzer normalises quiet audio up to -30 dBFS
            wav = wav * 10 ** ((self._TARGET_DBFS - rms_db) / 20)
        frames = int(np.ceil((len(wav) + 1) / self._HOP))
        step = int(round(SAMPLE_RATE / self._RATE / self._HOP))
        starts = list(range(0, max(1, frames - self._PARTIAL + step + 1), step))
        if len(starts) > 1 and (len(wav) - starts[-1] * self._HOP) / (self._PARTIAL * self._HOP) < self._COVERAGE:
            starts = starts[:-1]
        wav = F.pad(wav, (0, max(0, (starts[-1] + self._PARTIAL) * self._HOP - len(wav))))
        mel = self.mel(wav).T
        return torch.stack([mel[s:s + self._PARTIAL] for s in starts])

    def forward(self, waveforms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, 1, samples) and optional frame weights -> (batch, 256); NaN rows where too little speech."""
        partials: list[torch.Tensor] = []
        for b in range(waveforms.shape[0]):
            wav = waveforms[b, 0]
            if weights is not None:
                keep = F.interpolate(weights[b][None, None].float(), size=wav.shape[0], mode="nearest")[0, 0] > 0.5
                if keep.sum() < self.hparams.min_speech * SAMPLE_RATE:
                    partials.append(wav.new_empty(0, self._PARTIAL, 40))  # pyannote skips NaN rows
                    continue
                wav = wav[keep]
            partials.append(self._partials(wav))
        counts = [len(p) for p in partials]
        if not sum(counts):
            return waveforms.new_full((len(partials), 256), float("nan"))
        _, (hidden, _) = self.lstm(torch.cat(partials))  # one LSTM pass for the whole batch: 3-4x faster on CPU
        embedded = F.normalize(F.relu(self.linear(hidden[-1])), dim=1).split(counts)
        nan = waveforms.new_full((256,), float("nan"))
        return torch.stack([F.normalize(e.mean(0), dim=0) if len(e) else nan for e in embedded])


class OfflineSpeakerDiarization(SpeakerDiarization):
    """pyannote's `SpeakerDiarization` for the Silero segmentation: the VAD runs once over the whole recording
    with its state kept and hysteresis thresholds (`speech.onset` / `speech.offset` hyper-parameters), and the
    chunks are cut from that; run per 2 s chunk from a reset state it missed a quarter of AMI's speech."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        if isinstance(self._segmentation.model, SileroSegmentation):
            self.speech = ParamDict(onset=Uniform(0.0, 1.0), offset=Uniform(0.0, 1.0))

    def get_segmentations(self, file, hook=None) -> SlidingWindowFeature:
        model = self._segmentation.model
        if not isinstance(model, SileroSegmentation):
            return super().get_segmentations(file, hook=hook)
        samples = self._audio(file)[0][0].float()  # mono, 16 kHz (the embedding's rate, Silero's too)
        probs = model.speech_probabilities(samples)
        frame = _VAD_FRAME / SAMPLE_RATE
        speech = binarize(probs[:, None], onset=self.speech.onset, offset=self.speech.offset, initial_state=False)
        duration, step = self._segmentation.duration, self._segmentation.step
        seconds = len(samples) / SAMPLE_RATE
        chunks = max(1, int(np.ceil(max(0.0, seconds - duration) / step)) + 1)
        per_chunk = model.num_frames(int(duration * SAMPLE_RATE))
        starts = np.rint(np.arange(chunks) * step / frame).astype(int)
        index = starts[:, None] + np.arange(per_chunk)[None, :]
        padded = np.concatenate([speech[:, 0], np.zeros(max(0, index.max() + 1 - len(speech)))])
        data = padded[index][:, :, None].astype(np.float32)
        return SlidingWindowFeature(data, SlidingWindow(start=0.0, duration=duration, step=step))


def resemblyzer_weights() -> Path:
    spec = importlib.util.find_spec("resemblyzer")  # locate the wheel without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("resemblyzer is not installed: pip install --no-deps resemblyzer==0.1.4")
    return Path(next(iter(spec.submodule_search_locations))) / "pretrained.pt"


def save_checkpoint(model: Model, path: Path) -> Path:
    """Write `model` in the checkpoint format `Model.from_pretrained` reads (a Lightning dict + pyannote meta)."""
    import lightning

    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint = {"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                  "pytorch-lightning_version": lightning.__version__}
    model.on_save_checkpoint(checkpoint)
    checkpoint["pyannote.audio"]["versions"].setdefault("torch", torch.__version__)  # pyannote 3.x reads it
    torch.save(checkpoint, path)
    return path


def write_placeholder_plda(directory: Path, dimension: int, lda_dimension: int = 128) -> Path:
    """pyannote 4.0 loads a PLDA even for agglomerative clustering (which never uses it); this one is untrained."""
    directory.mkdir(parents=True, exist_ok=True)
    np.savez(directory / "xvec_transform.npz", mean1=np.zeros(dimension), mean2=np.zeros(lda_dimension),
             lda=np.eye(dimension, lda_dimension))
    np.savez(directory / "plda.npz", mu=np.zeros(lda_dimension), tr=np.eye(lda_dimension),
             psi=np.linspace(2.0, 1.0, lda_dimension))
    return directory


def write_pipeline(out: Path, segmentation: Model, embedding: Model, clustering: dict,
                   min_duration_off: float = 0.0, embedding_batch_size: int = 32,
                   segmentation_step: float = 0.1, speech: dict | None = None) -> Path:
    """Save both models and a speaker-diarization-3.1-style `config.yaml` that names them by local path;
    with `speech` (VAD thresholds), the pipeline is `OfflineSpeakerDiarization`."""
    import yaml

    save_checkpoint(segmentation, out / "segmentation" / "pytorch_model.bin")
    save_checkpoint(embedding, out / "embedding" / "pytorch_model.bin")  # no "wespeaker" in the path: see README
    write_placeholder_plda(out / "plda", embedding.dimension)
    config = {
        "version": "3.1.0",
        "pipeline": {"name": "offline_diarizer.OfflineSpeakerDiarization" if speech else
                     "pyannote.audio.pipelines.SpeakerDiarization", "params": {
            "clustering": "AgglomerativeClustering",
            "segmentation": "$model/segmentation",
            "embedding": "$model/embedding",
            "plda": "$model/plda",
            "embedding_batch_size": embedding_batch_size,
            "embedding_exclude_overlap": True,
            "segmentation_batch_size": 32,
            "segmentation_step": segmentation_step,
        }},
        "params": {"clustering": clustering, "segmentation": {"min_duration_off": min_duration_off},
                   **({"speech": speech} if speech else {})},
    }
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return out


def build_offline_pipeline(out: Path) -> Path:
    """The offline default: Silero segmentation + Resemblyzer embeddings in `OfflineSpeakerDiarization`.

    2 s chunks every 0.5 s (pyannote's default step, 0.2 s, embeds each second 10 times: 2.5x the time for no gain);
    VAD thresholds, gap filling and clustering threshold chosen on the AMI tuning clips and the phone call; the
    smallest cluster (pyannote caps it at a tenth of the chunks) on 2 and 10 minutes of samples/two_speakers.ogg,
    where 12 split each voice into several speakers at this threshold (docs/diarization.md)."""
    return write_pipeline(out, SileroSegmentation(duration=2.0), ResemblyzerEmbedding(),
                          clustering={"method": "centroid", "min_cluster_size": 90, "threshold": 0.5},
                          min_duration_off=1.0, segmentation_step=0.25, speech={"onset": 0.2, "offset": 0.1})
