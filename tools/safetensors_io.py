"""The one safetensors writer (and reader) of the conversion tools and the test fixture scripts: a dict of torch tensors as one file.

Uses the `safetensors` package when installed, else a minimal writer of the same format
(8-byte little-endian header length, JSON header, raw little-endian tensor data)."""
import json
import struct

# by name, so that importing this module does not import torch (scripts import it after putting EDM on sys.path)
DTYPES = {"torch.float32": "F32", "torch.float64": "F64", "torch.float16": "F16", "torch.int64": "I64"}


def save_safetensors(tensors, path, metadata=None):
    metadata = metadata or {"format": "pt"}
    try:
        from safetensors.torch import save_file
        save_file(tensors, path, metadata=metadata)
        return
    except ImportError:
        pass
    header, blobs, offset = {"__metadata__": metadata}, [], 0
    for name, t in tensors.items():
        arr = t.detach().contiguous().numpy()
        data = arr.astype(arr.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": DTYPES[str(t.dtype)], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def load_safetensors(path):
    """The tensors of a safetensors file as a dict of torch tensors (the F32/F64/F16/I64 files this module writes)."""
    import numpy as np
    import torch
    kinds = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        arr = np.frombuffer(data[a:b], dtype=np.dtype(kinds[h["dtype"]]).newbyteorder("<")).reshape(h["shape"])
        out[name] = torch.from_numpy(arr.astype(arr.dtype.newbyteorder("="))).clone()
    return out
