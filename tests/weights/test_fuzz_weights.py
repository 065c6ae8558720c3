"""Fuzzing the weights readers with a seeded mutator over real .pdparams and .pth bytes.

Every mutation must end in one of: the exact original, or a ppim error (PpimError) - never another
exception, a crash or a hang (the loop runs in a subprocess under a timeout and an address-space
limit). A .pdparams file carries no checksum of its own, so a flipped byte inside an array's data
can only be caught by the sha256 sidecar ppim writes beside its files: through the loader (sidecar
present) every mutation is exact-or-error; through the bare parser a mutation may also load the
original keys, shapes and dtypes with other values, and nothing else (checked against the model).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import paddle
import torch

import ppim
from ppim import weights

ROOT = Path(__file__).resolve().parents[2]
TINY = dict(img_size=32, embed_dim=24, depth=1, num_heads=3, stem_dim=8, num_classes=5)
MUTATIONS = 250

CHILD = textwrap.dedent("""
    import json, os, random, resource, sys
    sys.path.insert(0, sys.argv[1])
    import numpy as np
    import ppim
    from ppim import weights
    from ppim.errors import PpimError
    status = open("/proc/self/status").read().split("VmSize:")[1].split()[0]
    limit = int(status) * 1024 + (1 << 30)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    folder, count, seed = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    tiny = json.loads(sys.argv[5])
    model = ppim.lvvit_s(**tiny)
    rng = random.Random(seed)

    def mutate(data):
        data = bytearray(data)
        for _ in range(rng.randint(1, 3)):
            kind = rng.randrange(6)
            at = rng.randrange(len(data))
            if kind == 0:
                data[at] ^= 1 << rng.randrange(8)
            elif kind == 1:
                data[at] = rng.choice([0, 0xFF, 0x7F, 0x80, rng.randrange(256)])
            elif kind == 2:
                del data[at:]
            elif kind == 3:
                data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
            elif kind == 4:
                del data[at:at + rng.randint(1, 64)]
            else:
                length = rng.randint(1, 64)
                data[at:at] = data[at:at + length]
            if not data:
                data = bytearray(b"\\x80")
        return bytes(data)

    def same(a, b):
        return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and a[k].shape == b[k].shape
                                            and np.array_equal(a[k], b[k]) for k in a)

    tally = {}
    for name in ("w.pdparams", "w.pth"):
        source = os.path.join(folder, name)
        original_bytes = open(source, "rb").read()
        original = weights.read_weights(source, model).state
        shapes = {k: (v.shape, v.dtype) for k, v in original.items()}
        counts = {"exact": 0, "error": 0, "values": 0}
        for i in range(count):
            path = os.path.join(folder, "m_" + name)
            mutated = mutate(original_bytes)
            with open(path, "wb") as f:
                f.write(mutated)
            try:
                state = weights.read_weights(path, model).state
                weights.adapt_state(model, dict(state), path)
            except PpimError:
                counts["error"] += 1
                continue
            except BaseException as e:
                print(json.dumps({"failure": f"{name} mutation {i}: {type(e).__name__}: {e}"[:1500]}))
                with open(os.path.join(folder, "failing_" + name), "wb") as f:
                    f.write(mutated)
                sys.exit(3)
            if same(state, original):
                counts["exact"] += 1
            elif name.endswith(".pdparams") and {k: (v.shape, v.dtype) for k, v in state.items()} == shapes:
                counts["values"] += 1  # array bytes changed: only a sidecar can tell
            else:
                print(json.dumps({"failure": f"{name} mutation {i} loaded something else"}))
                sys.exit(4)
        # Through the loader, with the sidecar ppim writes beside its files: exact or error only.
        if name.endswith(".pdparams"):
            weights.cache.write_sidecar(__import__("pathlib").Path(path), weights.sha256_file(source))
            for i in range(count // 5):
                with open(path, "wb") as f:
                    f.write(mutate(original_bytes))
                try:
                    loaded = ppim.lvvit_s(pretrained=path, **tiny)
                except PpimError:
                    counts["error"] += 1
                    continue
                got = {k: v.numpy() for k, v in loaded.state_dict().items()}
                if not same({k: got[k] for k in original}, original):
                    print(json.dumps({"failure": f"loader accepted a mutation of {name} with a sidecar"}))
                    sys.exit(5)
                counts["exact"] += 1
        tally[name] = counts
    print(json.dumps(tally))
""")


def test_mutated_weights_load_exactly_or_fail_cleanly(tmp_path):
    model = ppim.lvvit_s(**TINY)
    rng = np.random.default_rng(0)
    state = {k: rng.standard_normal(v.shape).astype(np.float32) for k, v in model.state_dict().items()}
    paddle.save(state, str(tmp_path / "w.pdparams"))
    # The .pth in PyTorch's layout (Linear weights transposed back), so both files hold the same weights.
    linear = {f"{n}.weight" for n, layer in model.named_sublayers() if isinstance(layer, paddle.nn.Linear)}
    torch.save({k: torch.from_numpy(np.ascontiguousarray(v.T) if k in linear else v) for k, v in state.items()},
               tmp_path / "w.pth")
    np.testing.assert_array_equal(weights.read_weights(tmp_path / "w.pth", model).state["pos_embed"],
                                  state["pos_embed"])

    result = subprocess.run(
        [sys.executable, "-c", CHILD, str(ROOT), str(tmp_path), str(MUTATIONS), "20261122", json.dumps(TINY)],
        capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, (result.returncode, result.stdout[-2000:], result.stderr[-3000:])
    tally = json.loads(result.stdout.strip().splitlines()[-1])
    for name, counts in tally.items():
        # Both outcomes happen, so the mutator reaches past the header and the test can fail.
        assert counts["error"] > 0 and counts["exact"] + counts["values"] > 0, tally
    assert tally["w.pth"]["values"] == 0  # zip CRCs catch every changed byte of a .pth
