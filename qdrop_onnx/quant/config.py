"""The whole quantization configuration in one dataclass, loadable from TOML or YAML.

Flags given on the command line override the file; the effective configuration is written into the
report so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qdrop_onnx.errors import QdropError, first_line

METHODS = ("rtn", "adaround", "brecq", "qdrop")
# The sensitivity's learned rounding per layer and width (qdrop_onnx.mixed.sensitivity): see the measurement
# in that module's docstring for why the run's own rounding, not round to nearest, decides the allocation.
DEFAULT_SENSITIVITY_STEPS = 200
FORMATS = ("int8", "native")
ACT_INITS = ("minmax", "percentile", "mse")


class ConfigError(QdropError):
    """An invalid configuration value (bad bit width, unknown method, unreadable --config file)."""


@dataclass(frozen=True)
class LayerRule:
    """Settings for the weighted layers whose node name matches ``pattern`` (a name or an fnmatch glob).

    ``None`` leaves a setting as the rest of the configuration decides it. Rules apply in order; where two
    disagree on a node, the later one wins (placement warns). ``source`` says where the rule came from
    (``--layer-bits conv*=2:4``, ``layers[0]`` of a config file), for warnings and the report.
    """

    pattern: str
    w_bits: int | None = None
    a_bits: int | None = None
    symmetric: bool | None = None
    exclude: bool | None = None
    source: str = ""

    @classmethod
    def parse(cls, text: str) -> LayerRule:
        """``PATTERN=W`` or ``PATTERN=W:A`` (the ``--layer-bits`` syntax)."""
        pattern, sep, bits = text.rpartition("=")
        w, _, a = bits.partition(":")
        try:
            if not sep or not pattern:
                raise ValueError
            return cls(pattern, int(w), int(a) if a else None, source=f"--layer-bits {text}")
        except ValueError:
            raise ConfigError(f"--layer-bits takes PATTERN=W or PATTERN=W:A (e.g. 'conv1=8' or '*dw*=4:8'), "
                              f"got {text!r}") from None

    @classmethod
    def from_table(cls, values: dict[str, Any], index: int) -> LayerRule:
        """One entry of a config file's ``layers`` table: ``pattern`` (or ``node``) and settings."""
        values = {str(k).replace("-", "_"): v for k, v in values.items()}
        pattern = values.pop("pattern", values.pop("node", None))
        known = {"w_bits", "a_bits", "symmetric", "exclude"}
        unknown = sorted(set(values) - known)
        if not isinstance(pattern, str) or not pattern or unknown:
            raise ConfigError(f"layers[{index}] needs a 'pattern' (node name or glob) and settings among "
                              f"{', '.join(sorted(known))}" + (f"; unknown: {', '.join(unknown)}" if unknown else ""))
        return cls(pattern, source=f"layers[{index}] ({pattern})", **values)


@dataclass
class QuantConfig:
    """How to quantize a model. Every field has a CLI flag of the same name with dashes for underscores
    (``w_bits`` is ``--w``, ``a_bits`` is ``--a``): :func:`flag_name` says which, for error messages."""

    w_bits: int = 4
    a_bits: int = 4
    method: str = "qdrop"
    target: str = "ort_cpu"  # the runtime the file is for (qdrop_onnx.targets); its profile decides the grids
    format: str | None = None  # None: the target's default_format (validate fills it in)
    weight_asymmetric: bool = False
    first_last_bits: int = 8
    quantize_first_last: bool = False
    # True: no quantizer on a graph output (a conv writing the model's output then runs in float on ORT CPU)
    float_outputs: bool = False
    residual_bits: int = 8
    embedding_bits: int = 8  # tables of Gather on a constant (word/position/token-type embeddings)
    exclude: list[str] = field(default_factory=list)
    layers: list[LayerRule] = field(default_factory=list)  # per-layer rules, in order (later wins)
    # Mixed precision (qdrop_onnx.mixed.allocate): one budget, the widths it picks from, the samples measured.
    avg_w_bits: float | None = None  # parameter-weighted mean weight width over the allocated layers
    avg_a_bits: float | None = None  # element-weighted mean width of the allocated layers' input activations
    size_kb: float | None = None  # weights of every quantized layer at their widths, kB (params x bits / 8000)
    alloc_widths: list[int] = field(default_factory=lambda: [2, 3, 4, 8])
    sensitivity_samples: int = 128
    # Steps of learned rounding per layer and width in the sensitivity (0: round to nearest); None: the run's
    # own rounding, 0 for rtn, DEFAULT_SENSITIVITY_STEPS for the methods that learn it (validate fills it in).
    sensitivity_steps: int | None = None
    act_init: str = "mse"
    lp_norm: float = 2.4
    reduce_range: bool | None = None  # None: the target's reduce_range (validate fills it in)
    samples: int = 1024
    calib_act_samples: int = 256
    batch_size: int = 32
    seed: int = 0
    iters: int | str = 2000  # or "auto": each block's own budget, at most AUTO_MAX_ITERS (recon.block.WarmupPlateau)
    drop_prob: float = 0.5
    reg_weight: float | None = None  # None: 0.01, or 0.1 for models with depthwise convs
    round_lr: float | None = None  # None: 20 / iters within [0.001, 0.1] (recon.block.default_round_lr)
    cache_fp16: bool = False
    max_cache_gb: float | None = None  # None: half of the machine's physical memory; past it, files in cache_dir
    cache_dir: str | None = None  # None: the system's temporary folder (TMPDIR)
    release_memory: bool = False  # True: glibc's own malloc settings (lower peak RSS, slower; recon.allocator)

    @property
    def allocates(self) -> bool:
        """Whether a mixed-precision budget is set (``qdrop_onnx.mixed.allocate`` picks widths)."""
        return self.avg_w_bits is not None or self.size_kb is not None or self.avg_a_bits is not None

    def _check_average(self, flag: str, value: float) -> None:
        narrowest, widest = min(self.alloc_widths), max(self.alloc_widths)
        if value > 8:
            raise ConfigError(f"{flag} must be at most 8 bits, got {value:g}")
        if value < narrowest:
            raise ConfigError(f"{flag} {value:g} is below the narrowest width allowed "
                              f"({narrowest} bits, --alloc-widths {_widths(self.alloc_widths)}): "
                              "no allocation meets it")
        if value > widest:
            raise ConfigError(f"{flag} {value:g} is above the widest width allowed "
                              f"({widest} bits, --alloc-widths {_widths(self.alloc_widths)})")

    def validate(self) -> QuantConfig:
        """Check every value (:class:`ConfigError`; a setting the target cannot run is a
        :class:`~qdrop_onnx.targets.TargetError`) and fill in what the target decides (``format``,
        ``reduce_range``) and what the method implies (``sensitivity_steps``)."""
        from qdrop_onnx.targets import get_target

        for name in ("w_bits", "a_bits", "first_last_bits", "residual_bits", "embedding_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or not 2 <= value <= 8:
                raise ConfigError(f"{flag_name(name)} must be an integer bit width from 2 to 8, got {value!r}")
        for name, allowed in (("method", METHODS), ("format", FORMATS), ("act_init", ACT_INITS)):
            if getattr(self, name) not in allowed and not (name == "format" and self.format is None):
                raise ConfigError(f"{flag_name(name)} must be one of {', '.join(allowed)}, "
                                  f"got {getattr(self, name)!r}")
        if not 0.0 <= self.drop_prob <= 1.0:
            raise ConfigError(f"--drop-prob must be between 0 and 1, got {self.drop_prob}")
        if self.reg_weight is not None and self.reg_weight < 0:
            raise ConfigError("--reg-weight must not be negative")
        if self.round_lr is not None and not self.round_lr > 0:
            raise ConfigError("--round-lr must be positive")
        for name in ("samples", "calib_act_samples", "batch_size", "iters"):
            value = getattr(self, name)
            if name == "iters" and value == "auto":
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{flag_name(name)} must be a positive integer"
                                  + (" or auto" if name == "iters" else "") + f", got {value!r}")
        if self.max_cache_gb is not None and self.max_cache_gb <= 0:
            raise ConfigError("--max-cache-gb must be positive")
        if self.lp_norm <= 0:
            raise ConfigError("--lp-norm must be positive")
        if any(not isinstance(b, int) or isinstance(b, bool) or not 2 <= b <= 8 for b in self.alloc_widths) \
                or not self.alloc_widths:
            raise ConfigError(f"--alloc-widths takes bit widths from 2 to 8 (e.g. 2,3,4,8), got {self.alloc_widths!r}")
        if self.avg_w_bits is not None and self.size_kb is not None:
            raise ConfigError("--avg-w-bits and --size-kb are two budgets: give one")
        for flag, value in (("--avg-w-bits", self.avg_w_bits), ("--avg-a-bits", self.avg_a_bits)):
            if value is not None:
                self._check_average(flag, value)
        if self.size_kb is not None and not self.size_kb > 0:
            raise ConfigError(f"--size-kb must be positive, got {self.size_kb:g}")
        if not isinstance(self.sensitivity_samples, int) or self.sensitivity_samples < 1:
            raise ConfigError(f"--sensitivity-samples must be a positive integer, got {self.sensitivity_samples!r}")
        if self.sensitivity_steps is not None and (not isinstance(self.sensitivity_steps, int)
                                                   or isinstance(self.sensitivity_steps, bool)
                                                   or self.sensitivity_steps < 0):
            raise ConfigError(f"--sensitivity-steps must be a whole number of steps (0: round to nearest), "
                              f"got {self.sensitivity_steps!r}")
        for rule in self.layers:
            for bits in (rule.w_bits, rule.a_bits):
                if bits is not None and (not isinstance(bits, int) or not 2 <= bits <= 8):
                    raise ConfigError(f"{rule.source or rule.pattern}: bit widths are integers from 2 to 8, "
                                      f"got {bits!r}")
        profile = get_target(self.target)
        profile.check(self)
        if self.format is None:
            self.format = profile.default_format
        if self.reduce_range is None:
            self.reduce_range = profile.reduce_range
        if self.sensitivity_steps is None:
            self.sensitivity_steps = 0 if self.method == "rtn" else DEFAULT_SENSITIVITY_STEPS
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> QuantConfig:
        """The configuration ``values`` give (QuantConfig field names); where they name a ``target`` but no
        ``w_bits``/``a_bits``, the target's default widths."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown setting(s) {', '.join(unknown)} (settings are the fields of "
                              "QuantConfig, e.g. w_bits, drop_prob; data, device, verification and output are "
                              "given as flags)")
        layers = values.get("layers") or []
        if not isinstance(layers, list):
            raise ConfigError(f"{source}: 'layers' must be a list of tables (pattern = ..., w_bits = ...)")
        rules = []
        for i, r in enumerate(layers):
            if not isinstance(r, LayerRule | dict):
                raise ConfigError(f"{source}: layers[{i}] must be a table (pattern = ..., w_bits = ...)")
            rules.append(r if isinstance(r, LayerRule) else LayerRule.from_table(r, i))
        values = {**values, "layers": rules}
        if "target" in values:  # the target's widths where none is given (TensorRT: W8A8)
            from qdrop_onnx.targets import get_target

            profile = get_target(values["target"])
            values.setdefault("w_bits", profile.default_w_bits)
            values.setdefault("a_bits", profile.default_a_bits)
        return cls(**values)


def _widths(widths: list[int]) -> str:
    return ",".join(str(b) for b in sorted(widths))


def flag_name(field_name: str) -> str:
    """The CLI flag of a QuantConfig field, as error messages name it (``w_bits`` -> ``--w``)."""
    special = {"w_bits": "--w", "a_bits": "--a", "layers": "--layer-bits"}
    return special.get(field_name, "--" + field_name.replace("_", "-"))


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Settings from a .toml, .yaml/.yml or .json file (keys as in QuantConfig, dashes allowed)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        if path.suffix == ".toml":
            import tomllib

            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"config file {path} must end in .toml, .yaml, .yml or .json")
    except ConfigError:
        raise
    except Exception as exc:  # tomllib/yaml/json each raise their own parse error type
        first = first_line(exc)
        raise ConfigError(f"cannot parse config file {path}: {first}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a table of settings")
    return {str(k).replace("-", "_"): v for k, v in data.items()}
