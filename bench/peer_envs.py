"""Each peer quantizer in a virtual environment of its own under bench/venvs/ (git-ignored).

python -m bench.peer_envs [aimet|quark ...]

A peer never shares the project's environment: their pins (Quark: onnx<=1.22, onnxruntime<=1.28) would
break ours. Each venv gets the Makefile's CPU torch first (``TORCH_PIN``, default torch==2.13.0), so no
CUDA build is pulled. AIMET (``aimet-onnx``) and ``onnx2torch`` go in with ``--no-deps`` (their metadata
asks for torchvision and other things AdaRound never imports) followed by the dependencies they really
import. ``bench/venvs/<peer>.json`` records the outcome; a peer that cannot install is absent from the
benchmark with that reason, and is not retried until the file is deleted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

VENVS = Path(__file__).resolve().parent / "venvs"


@dataclass(frozen=True)
class Peer:
    name: str
    script: str  # bench/peers/<script>.py, run with the venv's python
    version: str
    steps: tuple[tuple[str, ...], ...]  # pip install argument lists, after the torch pin

    @property
    def python(self) -> Path:
        return VENVS / self.name / "bin" / "python"

    @property
    def status_file(self) -> Path:
        return VENVS / f"{self.name}.json"


PEERS = {p.name: p for p in (
    Peer("aimet", "aimet_adaround", "aimet-onnx==2.42.0", (
        ("--no-deps", "aimet-onnx==2.42.0", "onnx2torch==1.5.15"),
        ("numpy", "onnx", "onnxruntime", "onnx_ir>=0.1.16", "onnxscript>=0.4.0", "jinja2", "pyyaml", "jsonschema",
         "pandas", "psutil", "scipy", "scikit-learn", "tqdm", "osqp", "pybind11", "bokeh>=3.3.0", "hvplot>=0.10.0"),
    )),
    Peer("quark", "quark_adaround", "amd-quark==0.13", (
        ("amd-quark==0.13", "onnxruntime<=1.28.0"),
    )),
)}


def status(peer: Peer) -> dict[str, object]:
    """``{"ok": True, ...}`` when the peer's venv works, else ``{"ok": False, "reason": ...}``; installs once."""
    if peer.status_file.exists():
        return json.loads(peer.status_file.read_text())
    VENVS.mkdir(exist_ok=True)
    torch_pin = os.environ.get("TORCH_PIN", "torch==2.13.0")
    pip = [str(peer.python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    commands = [[sys.executable, "-m", "venv", str(VENVS / peer.name)], pip + [torch_pin],
                *[pip + list(step) for step in peer.steps],
                [str(peer.python), "-c", f"import {'aimet_onnx' if peer.name == 'aimet' else 'quark.onnx'}"]]
    print(f"bench: installing {peer.version} into {VENVS / peer.name} (once) ...", flush=True)
    result: dict[str, object] = {"ok": True, "version": peer.version}
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            lines = [ln for ln in (done.stderr or done.stdout).splitlines()
                     if ln.strip() and not ln.startswith("WARNING: Location")]
            result = {"ok": False, "version": peer.version,
                      "reason": f"`{' '.join(command[-3:])}` failed: {lines[-1] if lines else done.returncode}"}
            break
    peer.status_file.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> int:
    for name in sys.argv[1:] or list(PEERS):
        print(name, json.dumps(status(PEERS[name])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
