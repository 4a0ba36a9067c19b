"""Write the tiny BERT fixtures: random weights, the two torch exporters (not run by the tests).

PYTHONPATH=<dir with transformers and onnxscript> python tests/data/make_bert_tiny.py

``bert_tiny_dynamo18.onnx`` (+ ``.onnx.data``): torch.onnx's dynamo exporter at opset 18 with external data;
``bert_tiny_legacy17.onnx``: the TorchScript exporter at opset 17. Both with dynamic batch and sequence and
the three int64 inputs of a Hugging Face BERT encoder. Made with torch 2.13, transformers 5.24, onnxscript
0.7.2.
"""

from pathlib import Path

import torch
from transformers import BertConfig, BertModel

HERE = Path(__file__).parent
NAMES = ["input_ids", "attention_mask", "token_type_ids"]


class Encoder(torch.nn.Module):
    def __init__(self, model: BertModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask,
                          token_type_ids=token_type_ids).last_hidden_state


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    encoder = Encoder(BertModel(config).eval())
    ids = torch.randint(0, 100, (2, 9))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    example = (ids, mask, torch.zeros_like(ids))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("seq", max=64)
    program = torch.onnx.export(encoder, example, dynamo=True, opset_version=18, input_names=NAMES,
                                output_names=["last_hidden_state"],
                                dynamic_shapes={name: {0: batch, 1: seq} for name in NAMES})
    program.save(str(HERE / "bert_tiny_dynamo18.onnx"), external_data=True)
    torch.onnx.export(encoder, example, str(HERE / "bert_tiny_legacy17.onnx"), dynamo=False, opset_version=17,
                      input_names=NAMES, output_names=["last_hidden_state"],
                      dynamic_axes={name: {0: "batch", 1: "seq"} for name in NAMES})


if __name__ == "__main__":
    main()
