"""One speaker per person in ``anchorcast train prepare``: dlib's face embeddings and their clustering.

Without ``--speaker``, a few frames of every clip (:data:`SAMPLES_PER_CLIP`, spread over it) are aligned with
dlib's 5-point shape predictor and embedded with dlib's face recognition ResNet (128 numbers; both model files
ship in the ``face_recognition_models`` package). Clips are clustered by the mean of their embeddings:
agglomerative, average linkage (:func:`average_linkage`, in numpy: the same partitions as SciPy's average
linkage cut by distance), cut at :data:`SAME_PERSON_DISTANCE` (0.6, dlib's documented same-person distance).
Each cluster is a speaker named after the video folder that holds most of its clips, numbered (``anna-1``,
``anna-2``) when one folder name would name several clusters.

Measured on the synthetic speakers: the astronaut and its mirrored, recoloured variant are 0.25 apart (dlib sees
one person; within a clip frames are 0.14-0.18 apart), so the tests use the face3d engine's rendered head as the
second person: 0.71 from the astronaut. Embedding costs 0.10-0.16 s per frame on this machine's CPU (2 shared
cores): about 0.45 s per clip, against about 1.75 s of face detection for a 10 s clip.

A change of person without a jump of the face box inside one stretch (two presenters framed alike, cut
straight from one to the other) is not split: the clip's frames are averaged into one embedding.
"""

from __future__ import annotations

import importlib.util
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from anchorcast.errors import InputError
from anchorcast.media import Image
from anchorcast_plugins.engines.wav2lip.training.dataset import DatasetWriter, clip_id
from anchorcast_plugins.engines.wav2lip.training.prepare_report import VideoReport

SAMPLES_PER_CLIP = 3
SAME_PERSON_DISTANCE = 0.6
SHAPE_MODEL = "shape_predictor_5_face_landmarks.dat"
RECOGNITION_MODEL = "dlib_face_recognition_resnet_model_v1.dat"


def model_file(name: str) -> Path:
    """A model file of the ``face_recognition_models`` package, found without importing it (its
    ``__init__`` needs ``pkg_resources``)."""
    spec = importlib.util.find_spec("face_recognition_models")
    locations = list(spec.submodule_search_locations or []) if spec else []
    for folder in locations:
        path = Path(folder) / "models" / name
        if path.is_file():
            return path
    raise InputError(f"dlib's face model {name} is not installed",
                     hint="pip install 'anchorcast[wav2lip]' (face_recognition_models), or give --speaker NAME")


class FaceEmbedder:
    """dlib's face recognition ResNet, its faces aligned by the 5-point shape predictor."""

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise InputError("dlib is not installed: it tells the people in the videos apart",
                             hint="pip install 'anchorcast[wav2lip]' (dlib-bin), or give --speaker NAME") from None
        self._dlib = dlib
        self._shape = dlib.shape_predictor(str(model_file(SHAPE_MODEL)))
        self._net = dlib.face_recognition_model_v1(str(model_file(RECOGNITION_MODEL)))

    def embed(self, image: Image, face: tuple[int, int, int, int]) -> npt.NDArray[np.float64]:
        """The 128-number embedding of the face ``(x, y, w, h)`` in the RGB ``image``."""
        x, y, w, h = face
        picture = np.ascontiguousarray(image, np.uint8)
        shape = self._shape(picture, self._dlib.rectangle(int(x), int(y), int(x + w), int(y + h)))
        return np.asarray(self._net.compute_face_descriptor(picture, shape), np.float64)


def sample_indices(frames: int, count: int = SAMPLES_PER_CLIP) -> list[int]:
    """``count`` frame indices spread over a clip (its middle for one)."""
    if frames <= count:
        return list(range(frames))
    return [round((k + 0.5) * frames / count - 0.5) for k in range(count)]


@dataclass
class PersonClusters:
    """The clips' speakers after clustering: ``speakers[clip] = name``; ``distances`` between the clusters'
    mean embeddings (for the report)."""

    speakers: dict[str, str] = field(default_factory=dict)
    members: dict[str, list[str]] = field(default_factory=dict)
    nearest_other: float | None = None


def average_linkage(points: npt.NDArray[np.float64], threshold: float) -> npt.NDArray[np.int64]:
    """Agglomerative clustering of ``points`` (N, D), average linkage (a cluster's distance to another is the
    mean of its members' pairwise distances), merging while the closest two clusters are at most ``threshold``
    apart; one label per point. O(N^2) memory and at most N merges of O(N^2) each."""
    count = len(points)
    labels = np.arange(count)
    if count < 2:
        return labels
    distance = np.linalg.norm(points[:, None, :] - points[None, :, :], axis=2)
    np.fill_diagonal(distance, np.inf)
    size = np.ones(count)
    while True:
        i, j = np.unravel_index(int(np.argmin(distance)), distance.shape)
        if not distance[i, j] <= threshold:
            return labels
        merged = (size[i] * distance[i] + size[j] * distance[j]) / (size[i] + size[j])
        distance[i, :], distance[:, i] = merged, merged
        distance[i, i] = np.inf
        distance[j, :], distance[:, j] = np.inf, np.inf
        size[i] += size[j]
        labels[labels == j] = i


def cluster_people(embeddings: dict[str, npt.NDArray[np.float64]], folders: dict[str, str],
                   threshold: float = SAME_PERSON_DISTANCE) -> PersonClusters:
    """Clusters clips by their mean embedding (``embeddings[clip]``) and names each cluster after the folder
    (``folders[clip]``) most of its clips come from, numbered when a folder name is shared."""
    ids = list(embeddings)
    if not ids:
        return PersonClusters()
    labels = average_linkage(np.stack([embeddings[i] for i in ids]), threshold)
    groups: dict[int, list[str]] = {}
    for cid, label in zip(ids, labels, strict=True):
        groups.setdefault(int(label), []).append(cid)
    ordered = sorted(groups.values(), key=lambda members: ids.index(members[0]))  # first seen first
    base = [Counter(folders[c] for c in members).most_common(1)[0][0] for members in ordered]
    clusters = PersonClusters()
    seen: Counter[str] = Counter()
    for name, members in zip(base, ordered, strict=True):
        seen[name] += 1
        speaker = clip_id(name if base.count(name) == 1 else f"{name}-{seen[name]}")
        clusters.members[speaker] = members
        for cid in members:
            clusters.speakers[cid] = speaker
    if len(ordered) > 1:
        means = [np.mean([embeddings[c] for c in members], axis=0) for members in ordered]
        clusters.nearest_other = float(min(np.linalg.norm(a - b) for k, a in enumerate(means)
                                           for b in means[k + 1 :]))
    return clusters


def name_people(writer: DatasetWriter, videos: list[VideoReport],
                embeddings: dict[str, npt.NDArray[np.float64]]) -> float | None:
    """Clusters the written clips into people and gives each clip its person's name (and an id starting with it);
    returns the smallest distance between two people (None for one)."""
    notes = {c.id: (video, c) for video in videos for c in video.clips}
    live = {e["id"] for e in writer.entries}
    folders = {cid: Path(notes[cid][0].source).parent.name or "speaker" for cid in embeddings if cid in live}
    clusters = cluster_people({cid: embeddings[cid] for cid in folders}, folders)
    for cid, person in clusters.speakers.items():
        video, note = notes[cid]
        if person != note.speaker:
            note.id = writer.relabel(cid, person, clip_id(f"{person}-{Path(video.source).stem}-{note.start:06d}"))
            note.speaker = person
    return clusters.nearest_other


def people_map(entries: list[dict[str, Any]]) -> dict[str, dict[str, list[str]]]:
    """``dataset.json``'s ``people``: each speaker's clips and source videos."""
    people: dict[str, dict[str, list[str]]] = {}
    for entry in entries:
        person = people.setdefault(entry["speaker"], {"clips": [], "sources": []})
        person["clips"].append(entry["id"])
        source = entry["source"].split("#frames=")[0]
        if source not in person["sources"]:
            person["sources"].append(source)
    return people
