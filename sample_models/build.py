"""Build the small, real, trained sample models that quantcli is tested and demoed on.

Rebuild (from the repo root, in a SEPARATE venv so the CLI's own venv stays free of torch;
the CPU wheel of torch is pinned on purpose: an unpinned torch pulls GBs of CUDA):

    python3 -m venv .buildenv
    .buildenv/bin/pip install torch==2.13.0 scikit-learn onnx==1.23.2 onnxruntime==1.32.0 numpy
    .buildenv/bin/python sample_models/build.py

Everything is offline: the data is scikit-learn's bundled `load_digits` (1797 8x8 images, pixel
values 0..16, shipped inside the package). Training takes about two minutes on one CPU core.

Outputs, for <name> in digits_cnn and digits_transformer, in sample_models/<name>/:
    model.onnx        opset 17, weights inside, dynamic batch axis
    calib.npz         {input_name: array}, axis 0 = samples (256), dtype = model input dtype
    eval.npz          same format (360 samples)
    eval_labels.npy   int64 labels of eval.npz
    README.md         what the model is and its float accuracy measured through onnxruntime

The outputs are meant to be byte-identical across runs on the same machine: fixed seeds,
single-threaded deterministic training, and .npz files written with fixed zip timestamps.
"""

from __future__ import annotations

import collections
import io
import math
import re
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

SEED = 0
OPSET = 17
OUT_DIR = Path(__file__).resolve().parent
N_CALIB = 256
N_EVAL = 360
IMG_SIZE = 32  # the CNN sees digits upsampled from 8x8 to 32x32
VOCAB = 17  # pixel values 0..16 are the transformer's tokens
SEQ_LEN = 64


# --------------------------------------------------------------------------- determinism


def make_deterministic(seed: int) -> None:
    """Seed everything and force one thread so two runs give the same weights bit for bit."""
    np.random.seed(seed)
    torch.manual_seed(seed)
    # One thread: parallel reductions can split work differently; the models are tiny anyway.
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)


# --------------------------------------------------------------------------- data


def split_digits(seed: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Disjoint train / calib / eval split of sklearn digits; images as uint8 [N,8,8]."""
    digits = load_digits()
    images = digits.images.astype(np.uint8)  # values are integers 0..16 stored as float64
    labels = digits.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(labels))
    eval_idx = order[:N_EVAL]
    calib_idx = order[N_EVAL : N_EVAL + N_CALIB]
    train_idx = order[N_EVAL + N_CALIB :]
    return {
        "train": (images[train_idx], labels[train_idx]),
        "calib": (images[calib_idx], labels[calib_idx]),
        "eval": (images[eval_idx], labels[eval_idx]),
    }


def to_cnn_input(images: np.ndarray) -> np.ndarray:
    """uint8 [N,8,8] in 0..16 -> float32 [N,1,32,32] in [0,1], bilinear upsampling.

    Upsampling is preprocessing, not part of the graph, so the ONNX model is purely the CNN.
    """
    x = torch.from_numpy(images.astype(np.float32) / 16.0).unsqueeze(1)
    x = F.interpolate(x, size=(IMG_SIZE, IMG_SIZE), mode="bilinear", align_corners=False)
    return x.numpy().astype(np.float32)


def to_tokens(images: np.ndarray) -> np.ndarray:
    """uint8 [N,8,8] -> int64 [N,64]: row-major pixel values are the token ids."""
    return images.reshape(len(images), SEQ_LEN).astype(np.int64)


def shift_images(x: np.ndarray, max_shift: int, rng: np.random.Generator) -> np.ndarray:
    """Random integer translation of each image (zero fill): cheap augmentation that helps a
    1181-sample training set generalise. Works on the last two axes of any [N,...,H,W] array."""
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    pad = [(0, 0)] * (x.ndim - 2) + [(max_shift, max_shift), (max_shift, max_shift)]
    padded = np.pad(x, pad)
    out = np.empty_like(x)
    shifts = rng.integers(0, 2 * max_shift + 1, size=(n, 2))
    for i, (dy, dx) in enumerate(shifts):
        out[i] = padded[i, ..., dy : dy + h, dx : dx + w]
    return out


# --------------------------------------------------------------------------- models


class DigitsCNN(nn.Module):
    """Conv-BN-ReLU blocks (32-64-128-192 channels), max-pooling, global average pool, Linear."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
            layers: list[nn.Module] = [
                nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(),
            ]
            return layers + ([nn.MaxPool2d(2)] if pool else [])

        self.features = nn.Sequential(
            *block(1, 32, pool=True),  # 32x32 -> 16x16
            *block(32, 64, pool=True),  # -> 8x8
            *block(64, 128, pool=True),  # -> 4x4
            *block(128, 192, pool=False),  # 4x4
        )
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(192, 10)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.features(image)
        x = x.mean(dim=(2, 3))  # global average pool -> ReduceMean in ONNX
        return self.head(self.dropout(x))


def fold_batchnorm(model: DigitsCNN) -> DigitsCNN:
    """Fold every eval-mode BatchNorm into the Conv before it, so the exported graph has plain
    Conv (with bias) and no BatchNormalization, whatever the exporter would do on its own."""
    model = model.eval()
    layers = list(model.features)
    fused: list[nn.Module] = []
    i = 0
    while i < len(layers):
        if (
            isinstance(layers[i], nn.Conv2d)
            and i + 1 < len(layers)
            and isinstance(layers[i + 1], nn.BatchNorm2d)
        ):
            fused.append(torch.nn.utils.fusion.fuse_conv_bn_eval(layers[i], layers[i + 1]))
            i += 2
        else:
            fused.append(layers[i])
            i += 1
    model.features = nn.Sequential(*fused)
    return model


class SelfAttention(nn.Module):
    """Multi-head self-attention written out with matmul/softmax so ONNX sees plain
    MatMul/Add/Softmax/Transpose/Reshape instead of fused attention kernels."""

    def __init__(self, d_model: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.q = nn.Linear(d_model, d_model)
        self.k = nn.Linear(d_model, d_model)
        self.v = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # -1 for the batch dim keeps the Reshape target a constant, so no Shape/Gather ops.
        return x.reshape(-1, SEQ_LEN, self.n_heads, self.d_head).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._heads(self.q(x)), self._heads(self.k(x)), self._heads(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.d_head))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        ctx = ctx.transpose(1, 2).reshape(-1, SEQ_LEN, self.n_heads * self.d_head)
        return self.out(ctx)


class EncoderLayer(nn.Module):
    """Pre-LayerNorm encoder layer (more stable to train from scratch than post-LN)."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(d_model)
        self.attn = SelfAttention(d_model, n_heads)
        self.ln2 = nn.LayerNorm(d_model)
        self.ff1 = nn.Linear(d_model, d_ff)
        self.ff2 = nn.Linear(d_ff, d_model)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop(self.attn(self.ln1(x)))
        return x + self.drop(self.ff2(F.relu(self.ff1(self.ln2(x)))))


class DigitsTransformer(nn.Module):
    """Token + learned position embedding, 2 encoder layers, final LayerNorm, mean-pool, Linear."""

    def __init__(self, d_model: int = 128, n_heads: int = 4, d_ff: int = 256, n_layers: int = 2) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Parameter(torch.randn(1, SEQ_LEN, d_model) * 0.02)
        self.layers = nn.ModuleList(
            EncoderLayer(d_model, n_heads, d_ff, dropout=0.1) for _ in range(n_layers)
        )
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, 10)
        # Same small scale for token and position embeddings: with nn.Embedding's default
        # N(0,1) the position signal is drowned out and the model sees a bag of pixel values.
        nn.init.normal_(self.tok.weight, std=0.02)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.tok(tokens) + self.pos
        for layer in self.layers:
            x = layer(x)
        return self.head(self.ln(x).mean(dim=1))


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------- training


def train(
    model: nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    augment: Callable[[np.ndarray, np.random.Generator], np.ndarray],
    epochs: int,
    lr: float,
    batch: int,
    seed: int,
) -> None:
    """AdamW + one-cycle LR schedule; fresh augmentation every epoch from a seeded generator."""
    rng = np.random.default_rng(seed)
    steps_per_epoch = math.ceil(len(x) / batch)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch)
    labels = torch.from_numpy(y)
    model.train()
    for _ in range(epochs):
        xa = torch.from_numpy(augment(x, rng))
        order = torch.from_numpy(rng.permutation(len(x)))
        for s in range(steps_per_epoch):
            idx = order[s * batch : (s + 1) * batch]
            loss = F.cross_entropy(model(xa[idx]), labels[idx], label_smoothing=0.05)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


# --------------------------------------------------------------------------- export + checks


def export_onnx(model: nn.Module, example: torch.Tensor, input_name: str, path: Path) -> onnx.ModelProto:
    """Export with the TorchScript exporter (dynamo=False): it targets opset 17 natively, needs no
    onnxscript, constant-folds weight transposes into initializers and names things
    deterministically. Then run onnx shape inference and save as one self-contained file."""
    buf = io.BytesIO()
    # The TorchScript exporter is deprecated (not removed) in torch 2.13; silence just that notice.
    warnings.filterwarnings("ignore", message="You are using the legacy TorchScript-based ONNX export")
    torch.onnx.export(
        model,
        (example,),
        buf,
        dynamo=False,
        opset_version=OPSET,
        input_names=[input_name],
        output_names=["logits"],
        dynamic_axes={input_name: {0: "batch"}, "logits": {0: "batch"}},
        do_constant_folding=True,
    )
    proto = onnx.shape_inference.infer_shapes(onnx.load_from_string(buf.getvalue()), strict_mode=True)
    proto.producer_name = "quantcli sample_models/build.py"
    onnx.save(proto, path)  # ~1 MB: far under the 2 GB limit, so weights stay inside
    return proto


def check_onnx(
    model: nn.Module, proto: onnx.ModelProto, path: Path, input_name: str, x: np.ndarray
) -> np.ndarray:
    """Checker (full), no BatchNorm left, weights of MatMul/Gemm/Conv are initializers, and
    onnxruntime matches torch. Returns onnxruntime logits for x."""
    onnx.checker.check_model(proto, full_check=True)
    ops = collections.Counter(n.op_type for n in proto.graph.node)
    assert "BatchNormalization" not in ops, ops
    inits = {t.name for t in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv", "Gather"):
            continue
        # The two activation x activation MatMuls of each attention (Q.K^T, P.V) are the only
        # weight-bearing ops allowed to have no constant operand; the exporter names them
        # "<layer>/attn/MatMul" and "<layer>/attn/MatMul_1" (q/k/v/out are "<layer>/attn/q/MatMul").
        is_attention_product = re.search(r"/attn/MatMul(_1)?$", node.name) is not None
        has_weight = any(name in inits for name in node.input)
        assert has_weight or is_attention_product, f"{node.op_type} {node.name} has no initializer operand"
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {input_name: x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    diff = float(np.abs(got - want).max())
    assert diff < 1e-4, f"onnxruntime vs torch max abs diff {diff}"
    print(f"  onnxruntime vs torch max abs diff: {diff:.2e}")
    print(f"  ops: {dict(sorted(ops.items()))}")
    return got


def save_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez_compressed, but with a fixed zip timestamp so the bytes are reproducible
    (np.savez stamps each member with the current time)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for key, arr in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.ascontiguousarray(arr), allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, member.getvalue())


def write_outputs(
    name: str,
    model: nn.Module,
    input_name: str,
    calib: np.ndarray,
    eval_x: np.ndarray,
    eval_y: np.ndarray,
    readme_lines: list[str],
) -> None:
    """Export, check, measure accuracy through onnxruntime, and write the model's folder."""
    out = OUT_DIR / name
    out.mkdir(parents=True, exist_ok=True)
    path = out / "model.onnx"
    proto = export_onnx(model, torch.from_numpy(eval_x[:2]), input_name, path)
    logits = check_onnx(model, proto, path, input_name, eval_x)
    acc = float((logits.argmax(axis=1) == eval_y).mean())
    print(f"  eval accuracy (onnxruntime, float): {acc:.4f} ({int(round(acc * len(eval_y)))}/{len(eval_y)})")
    save_npz(out / "calib.npz", {input_name: calib})
    save_npz(out / "eval.npz", {input_name: eval_x})
    np.save(out / "eval_labels.npy", eval_y.astype(np.int64), allow_pickle=False)
    text = "\n".join(readme_lines).format(acc=100 * acc, n_eval=len(eval_y), params=count_params(model))
    (out / "README.md").write_text(text + "\n")


# --------------------------------------------------------------------------- main


def build_cnn(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    print("digits_cnn")
    make_deterministic(SEED)
    x_train = to_cnn_input(data["train"][0])
    model = DigitsCNN()
    # Shifts of up to 3 px at 32x32 (~0.75 of an original pixel) mimic off-centre handwriting.
    train(
        model,
        x_train,
        data["train"][1],
        lambda x, r: shift_images(x, 3, r),
        epochs=20,
        lr=3e-3,
        batch=64,
        seed=SEED,
    )
    model = fold_batchnorm(model)
    write_outputs(
        "digits_cnn",
        model,
        "image",
        to_cnn_input(data["calib"][0]),
        to_cnn_input(data["eval"][0]),
        data["eval"][1],
        [
            "# digits_cnn",
            "",
            "Image classifier for scikit-learn's 8x8 digits, upsampled (bilinear) to 32x32 and scaled to [0,1].",
            "Input `image` float32 [batch,1,32,32]; output `logits` float32 [batch,10]. ONNX opset 17.",
            "Four Conv(3x3)+ReLU blocks (32-64-128-192 ch, BatchNorm folded into Conv), MaxPool, global average pool, Linear; {params:,} parameters (after folding).",
            "Float eval accuracy through onnxruntime: {acc:.2f}% on the {n_eval} samples of eval.npz.",
            "Made by `sample_models/build.py` (PyTorch, trained from scratch with random shifts; calib.npz/eval.npz are disjoint from training).",
        ],
    )


def build_transformer(data: dict[str, tuple[np.ndarray, np.ndarray]]) -> None:
    print("digits_transformer")
    make_deterministic(SEED)
    x_train = to_tokens(data["train"][0])
    model = DigitsTransformer()

    # No augmentation here: 1-pixel shifts of an 8x8 picture are too coarse and cost accuracy
    # (tried: ~96% with shifts vs ~97.5% without, for the same budget).
    train(model, x_train, data["train"][1], lambda x, r: x, epochs=25, lr=2e-3, batch=64, seed=SEED)
    write_outputs(
        "digits_transformer",
        model,
        "tokens",
        to_tokens(data["calib"][0]),
        to_tokens(data["eval"][0]),
        data["eval"][1],
        [
            "# digits_transformer",
            "",
            "Transformer encoder classifier for scikit-learn's 8x8 digits, read as 64 tokens (pixel values 0..16, row-major).",
            "Input `tokens` int64 [batch,64]; output `logits` float32 [batch,10]. ONNX opset 17.",
            "Token + learned position embedding, 2 pre-LN encoder layers (d_model 128, 4 heads, FFN 256 ReLU, attention as plain MatMul/Softmax), mean-pool, Linear; {params:,} parameters.",
            "Float eval accuracy through onnxruntime: {acc:.2f}% on the {n_eval} samples of eval.npz.",
            "Made by `sample_models/build.py` (PyTorch, trained from scratch; calib.npz/eval.npz are disjoint from training).",
        ],
    )


def main() -> None:
    data = split_digits(SEED)
    print({k: len(v[1]) for k, v in data.items()})
    for build in (build_cnn, build_transformer):
        start = time.perf_counter()
        build(data)
        print(f"  took {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
