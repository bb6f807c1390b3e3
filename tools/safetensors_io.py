"""The one safetensors writer of the conversion tools and the test fixture scripts: a dict of torch tensors as one file.

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
