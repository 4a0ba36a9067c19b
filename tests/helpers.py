"""Shared test helpers: build small ONNX graphs and compare the torch rebuild with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from qdrop_onnx.graph import load_model, lower

ASSETS = Path(__file__).resolve().parents[1].parent / "shared" / "assets"
needs_assets = pytest.mark.skipif(not ASSETS.is_dir(), reason=f"real assets not found at {ASSETS}")

_ELEM = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64,
         np.dtype(np.int32): TensorProto.INT32, np.dtype(np.bool_): TensorProto.BOOL}


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, np.ndarray], outputs: list[str],
               consts: dict[str, np.ndarray] | None = None, opset: int = 17,
               out_types: dict[str, int] | None = None,
               domains: dict[str, int] | None = None) -> onnx.ModelProto:
    """A model from nodes; graph inputs typed from example arrays, outputs float unless out_types says."""
    out_types = out_types or {}
    graph = helper.make_graph(
        nodes, "test",
        [helper.make_tensor_value_info(n, _ELEM[a.dtype], list(a.shape)) for n, a in inputs.items()],
        [helper.make_tensor_value_info(n, out_types.get(n, TensorProto.FLOAT), None) for n in outputs],
        [numpy_helper.from_array(np.asarray(v), n) for n, v in (consts or {}).items()],
    )
    imports = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    model = helper.make_model(graph, opset_imports=imports)
    model.ir_version = 8 if opset <= 17 else 9 if opset <= 20 else 10
    # Graph outputs need a shape for onnx.checker: take it from shape inference (rank-only when unknown).
    inferred = onnx.shape_inference.infer_shapes(model) if not domains else model
    known = {v.name: v for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    for out in model.graph.output:
        source = known.get(out.name)
        if source is not None and source.type.tensor_type.HasField("shape"):
            out.type.tensor_type.shape.CopyFrom(source.type.tensor_type.shape)
        else:
            out.type.tensor_type.shape.SetInParent()
    return model


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def run_torch(model: onnx.ModelProto, feeds: dict[str, np.ndarray], simplify: bool = False) -> list[np.ndarray]:
    graph = lower(load_model(model, simplify=simplify))
    with torch.no_grad():
        out = graph(*[torch.from_numpy(feeds[name]) for name in graph.input_names])
    outs = out if isinstance(out, tuple) else (out,)
    return [o.numpy() for o in outs]


def max_abs_diff(model: onnx.ModelProto, feeds: dict[str, np.ndarray], simplify: bool = False) -> float:
    """Largest |torch - ORT| over all outputs; shapes and dtypes must match exactly."""
    expected = run_ort(model, feeds)
    got = run_torch(model, feeds, simplify=simplify)
    assert len(got) == len(expected)
    worst = 0.0
    for g, e in zip(got, expected, strict=True):
        assert g.shape == e.shape, (g.shape, e.shape)
        assert g.dtype == e.dtype, (g.dtype, e.dtype)
        if g.size:
            worst = max(worst, float(np.max(np.abs(g.astype(np.float64) - e.astype(np.float64)))))
    return worst


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` with its first input's batch dimension symbolic ("N"), in place."""
    dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    dim.Clear()
    dim.dim_param = "N"
    return model


def small_cnn(seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """Conv-BN-Relu → residual Conv-Relu → GAP → Gemm, with a dynamic batch: a tiny stand-in for ResNets."""
    rng = np.random.RandomState(seed)
    N = helper.make_node
    consts = {
        "w0": rng.randn(8, 3, 3, 3).astype(np.float32) * 0.3, "b0": rng.randn(8).astype(np.float32) * 0.1,
        "bn_s": 1 + 0.1 * rng.randn(8).astype(np.float32), "bn_b": 0.1 * rng.randn(8).astype(np.float32),
        "bn_m": 0.1 * rng.randn(8).astype(np.float32), "bn_v": 1 + 0.1 * rng.rand(8).astype(np.float32),
        "w1": rng.randn(8, 8, 3, 3).astype(np.float32) * 0.2, "fc": rng.randn(10, 8).astype(np.float32),
        "fc_b": rng.randn(10).astype(np.float32) * 0.1,
    }
    nodes = [
        N("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
        N("BatchNormalization", ["c0", "bn_s", "bn_b", "bn_m", "bn_v"], ["n0"], name="stem_bn"),
        N("Relu", ["n0"], ["r0"]),
        N("Conv", ["r0", "w1"], ["c1"], pads=[1, 1, 1, 1], name="res_conv"),
        N("Relu", ["c1"], ["r1"]), N("Add", ["r0", "r1"], ["s"]), N("Relu", ["s"], ["r2"]),
        N("GlobalAveragePool", ["r2"], ["g"]), N("Flatten", ["g"], ["f"]),
        N("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    x = rng.randn(4, 3, 8, 8).astype(np.float32)
    return dynamic_batch(make_model(nodes, {"x": x}, ["logits"], consts)), x


def small_cnn_and_images(folder: Path, count: int, classes: int = 0) -> tuple[Path, Path]:
    """``folder/net.onnx`` (the small CNN) and ``count`` random 8x8 PNGs in ``folder/imgs`` (seed 0),
    spread over ``classes`` class folders ``c0, c1, ...`` when ``classes`` > 0."""
    from PIL import Image

    model, _ = small_cnn()
    onnx.save(model, folder / "net.onnx")
    rng = np.random.RandomState(0)
    for i in range(count):
        target = folder / "imgs" / f"c{i % classes}" if classes else folder / "imgs"
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.randint(0, 256, (8, 8, 3), dtype=np.uint8)).save(target / f"{i}.png")
    return folder / "net.onnx", folder / "imgs"


def small_mobile_cnn(seed: int = 0) -> tuple[onnx.ModelProto, np.ndarray]:
    """Conv-ReLU6 → depthwise Conv-ReLU6 → 1x1 Conv → GAP → Gemm: a tiny stand-in for EfficientNet-Lite."""
    rng = np.random.RandomState(seed)
    N = helper.make_node
    consts = {
        "w0": rng.randn(8, 3, 3, 3).astype(np.float32) * 0.5, "b0": rng.randn(8).astype(np.float32) * 0.2,
        "dw": rng.randn(8, 1, 3, 3).astype(np.float32) * 0.5, "dw_b": rng.randn(8).astype(np.float32) * 0.2,
        "pw": rng.randn(8, 8, 1, 1).astype(np.float32) * 0.3, "fc": rng.randn(10, 8).astype(np.float32),
        "fc_b": rng.randn(10).astype(np.float32) * 0.1,
        "zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32),
    }
    nodes = [
        N("Conv", ["x", "w0", "b0"], ["c0"], pads=[1, 1, 1, 1], name="stem"),
        N("Clip", ["c0", "zero", "six"], ["r0"], name="stem_relu6"),
        N("Conv", ["r0", "dw", "dw_b"], ["c1"], pads=[1, 1, 1, 1], group=8, name="depthwise"),
        N("Clip", ["c1", "zero", "six"], ["r1"], name="depthwise_relu6"),
        N("Conv", ["r1", "pw"], ["c2"], name="project"),
        N("GlobalAveragePool", ["c2"], ["g"]), N("Flatten", ["g"], ["f"]),
        N("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1, name="fc"),
    ]
    x = rng.randn(4, 3, 8, 8).astype(np.float32) * 2
    return dynamic_batch(make_model(nodes, {"x": x}, ["logits"], consts)), x


def tiny_token_encoder(seed: int = 0, vocab: int = 20, dim: int = 8) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """Token ids + attention mask (int64, dynamic batch and sequence) -> embedding -> two residual FFN units,
    masked: the data-model shape of a BERT encoder (integer side inputs, a mask read late) in a few nodes."""
    rng = np.random.RandomState(seed)
    N = helper.make_node
    consts = {"emb": rng.randn(vocab, dim).astype(np.float32),
              **{f"w{i}": (rng.randn(dim, dim) / np.sqrt(dim)).astype(np.float32) for i in range(4)},
              "b0": rng.randn(dim).astype(np.float32) * 0.1, "ax": np.array([2], np.int64)}
    nodes = [
        N("Gather", ["emb", "input_ids"], ["e"], axis=0, name="embed"),
        N("Cast", ["attention_mask"], ["mf"], to=TensorProto.FLOAT), N("Unsqueeze", ["mf", "ax"], ["m3"]),
        N("MatMul", ["e", "w0"], ["h0"], name="ffn1_up"), N("Add", ["h0", "b0"], ["h0b"]), N("Relu", ["h0b"], ["a0"]),
        N("MatMul", ["a0", "w1"], ["h1"], name="ffn1_down"), N("Add", ["e", "h1"], ["r1"], name="res1"),
        N("MatMul", ["r1", "w2"], ["h2"], name="ffn2_up"), N("Relu", ["h2"], ["a2"]),
        N("MatMul", ["a2", "w3"], ["h3"], name="ffn2_down"), N("Add", ["r1", "h3"], ["r2"], name="res2"),
        N("Mul", ["r2", "m3"], ["hidden"], name="mask_out"),
    ]
    ids = rng.randint(1, vocab, size=(4, 6)).astype(np.int64)
    mask = np.ones((4, 6), np.int64)
    mask[1, 4:] = mask[3, 2:] = 0
    ids[mask == 0] = 0
    feeds = {"input_ids": ids, "attention_mask": mask}
    model = make_model(nodes, feeds, ["hidden"], consts)
    for value in model.graph.input:
        for d, name in zip(value.type.tensor_type.shape.dim, ("batch", "seq"), strict=True):
            d.Clear()
            d.dim_param = name
    return model, feeds


def keras_style_cnn(seed: int = 0, groups: int = 1, width: int = 8, size: int = 16,
                    batch: int = 4) -> tuple[onnx.ModelProto, np.ndarray]:
    """Conv(valid) -> ReLU -> BatchNorm, four times (the third grouped by ``groups``; ``width``, ``width``,
    ``width``, 2 x ``width`` channels), then GlobalAveragePool -> Flatten -> Gemm: the BN after the
    activation, as Keras models put it, with no padding anywhere; ``size`` x ``size`` inputs, dynamic batch
    (the example has ``batch``). ``bench.coverage`` times a larger one."""
    rng = np.random.RandomState(seed)
    N = helper.make_node
    consts: dict[str, np.ndarray] = {}
    nodes = []
    x, channels = "x", 3
    for i, (out, group) in enumerate([(width, 1), (width, 1), (width, groups), (2 * width, 1)]):
        consts[f"w{i}"] = (rng.randn(out, channels // group, 3, 3) * np.sqrt(2.0 / (9 * channels // group))
                           ).astype(np.float32)
        consts[f"b{i}"] = rng.randn(out).astype(np.float32) * 0.1
        for k, (lo, hi) in {"s": (0.5, 1.5), "t": (-0.3, 0.3), "m": (-0.2, 0.2), "v": (0.5, 1.5)}.items():
            consts[f"bn{i}_{k}"] = rng.uniform(lo, hi, out).astype(np.float32)
        nodes += [N("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"], group=group, name=f"conv{i}"),
                  N("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"),
                  N("BatchNormalization", [f"r{i}"] + [f"bn{i}_{k}" for k in "stmv"], [f"n{i}"], name=f"bn{i}")]
        x, channels = f"n{i}", out
    consts["fc"] = rng.randn(10, 2 * width).astype(np.float32) * 0.3
    consts["fc_b"] = rng.randn(10).astype(np.float32) * 0.1
    nodes += [N("GlobalAveragePool", [x], ["g"], name="gap"), N("Flatten", ["g"], ["f"], name="flatten"),
              N("Gemm", ["f", "fc", "fc_b"], ["logits"], transB=1, name="fc")]
    xs = rng.randn(batch, 3, size, size).astype(np.float32)
    return dynamic_batch(make_model(nodes, {"x": xs}, ["logits"], consts)), xs


def mobile_detector_net(seed: int = 0, width: int = 8, size: int = 16,
                        batch: int = 4) -> tuple[onnx.ModelProto, np.ndarray]:
    """A MobileNetV3-style segmentation head: Conv -> HardSwish, depthwise Conv -> ReLU, squeeze-excite
    (GlobalAveragePool -> Conv -> Relu -> Conv -> HardSigmoid -> Mul), 1x1 Conv, Erf-GELU, a stride-2 Conv,
    Resize x2 and ConvTranspose x2 back up, Concat with the skip path, a 1x1 Conv to a 2-channel map."""
    rng = np.random.RandomState(seed)
    N = helper.make_node
    c = width

    def w(name: str, out: int, inp: int, k: int) -> None:
        consts[name] = (rng.randn(out, inp, k, k) * np.sqrt(2.0 / (inp * k * k))).astype(np.float32)
        consts[name + "_b"] = (rng.randn(out) * 0.1).astype(np.float32)

    consts: dict[str, np.ndarray] = {"half": np.array(0.5, np.float32), "one": np.array(1.0, np.float32),
                                     "sqrt2": np.array(np.sqrt(2.0), np.float32),
                                     "scales": np.array([1, 1, 2, 2], np.float32)}
    w("stem", c, 3, 3)
    w("dw", c, 1, 3)
    w("se1", c // 2, c, 1)
    w("se2", c, c // 2, 1)
    w("pw", 2 * c, c, 1)
    w("down", 2 * c, 2 * c, 3)
    consts["up"] = (rng.randn(2 * c, c, 2, 2) * np.sqrt(1.0 / (2 * c))).astype(np.float32)  # [in, out, k, k]
    consts["up_b"] = (rng.randn(c) * 0.1).astype(np.float32)
    w("fuse", c, 2 * c + c + c, 1)
    w("head", 2, c, 1)
    nodes = [
        N("Conv", ["x", "stem", "stem_b"], ["s0"], pads=[1, 1, 1, 1], name="stem"),
        N("HardSwish", ["s0"], ["s1"], name="stem_hswish"),
        N("Conv", ["s1", "dw", "dw_b"], ["d0"], pads=[1, 1, 1, 1], group=c, name="dw"),
        N("Relu", ["d0"], ["d1"], name="dw_relu"),
        N("GlobalAveragePool", ["d1"], ["g"], name="se_pool"),
        N("Conv", ["g", "se1", "se1_b"], ["e0"], name="se_reduce"), N("Relu", ["e0"], ["e1"], name="se_relu"),
        N("Conv", ["e1", "se2", "se2_b"], ["e2"], name="se_expand"),
        N("HardSigmoid", ["e2"], ["e3"], alpha=1 / 6, name="se_gate"), N("Mul", ["d1", "e3"], ["se"], name="se_mul"),
        N("Conv", ["se", "pw", "pw_b"], ["p0"], name="pw"),
        # Erf-GELU: x * 0.5 * (1 + erf(x / sqrt 2))
        N("Div", ["p0", "sqrt2"], ["p1"], name="gelu_div"), N("Erf", ["p1"], ["p2"], name="gelu_erf"),
        N("Add", ["p2", "one"], ["p3"], name="gelu_add"), N("Mul", ["p0", "p3"], ["p4"], name="gelu_mul"),
        N("Mul", ["p4", "half"], ["p5"], name="gelu_half"),
        N("Conv", ["p5", "down", "down_b"], ["q0"], pads=[1, 1, 1, 1], strides=[2, 2], name="down"),
        N("Relu", ["q0"], ["q1"], name="down_relu"),
        N("Resize", ["q1", "", "scales"], ["r0"], mode="nearest", name="resize"),
        N("ConvTranspose", ["q1", "up", "up_b"], ["t0"], strides=[2, 2], name="up"),
        N("Concat", ["r0", "t0", "se"], ["cat"], axis=1, name="concat"),
        N("Conv", ["cat", "fuse", "fuse_b"], ["f0"], name="fuse"), N("Relu", ["f0"], ["f1"], name="fuse_relu"),
        N("Conv", ["f1", "head", "head_b"], ["map"], name="head"),
    ]
    xs = rng.randn(batch, 3, size, size).astype(np.float32)
    return dynamic_batch(make_model(nodes, {"x": xs}, ["map"], consts)), xs
