"""Regenerates the reference data of FrechetTests, NpzTests and InceptionTests (run once, results committed).

    python3 make_testdata.py --pytorch-fid /path/to/pytorch-fid/src   # or with pytorch-fid installed

Needs numpy, scipy, mpmath, torch and torchvision (Debian: python3-numpy python3-scipy python3-mpmath
python3-torch python3-torchvision). The product never runs Python; these files only pin expected values.

- frechet_cases.json: Gaussian statistics and their Frechet distance computed two independent ways:
  `pytorch_fid` = pytorch-fid's own calculate_frechet_distance (scipy.linalg.sqrtm of S1 S2, the numbers
  published FIDs are made with) and `exact` = the same formula with tr sqrt(S1 S2) = sum of square roots
  of the eigenvalues of the non-symmetric product S1 S2, in 60-digit arithmetic (mpmath.eig).
  Also features with their np.mean / np.cov statistics.
- stats_savez.npz / stats_savez_compressed.npz: arrays written by numpy (np.savez / np.savez_compressed).
- inception_state_dict.txt: name and shape of every entry of the state dict of pytorch-fid's
  fid_inception_v3() (the layout of pt_inception-2015-12-05-6726825d.pth), in its order.
- inception_features.npz: pool features that pytorch-fid's InceptionV3 computes, in float32 and float64, for a
  deterministic input (2, 3, 64, 64) when every weight is the deterministic pseudo-random value of
  `fill` below (InceptionTests recomputes the same weights).
"""
import argparse, json, math, sys
import numpy as np

MASK = (1 << 64) - 1


def fnv1a64(text):
    h = 0xCBF29CE484222325
    for b in text.encode("ascii"):
        h = ((h ^ b) * 0x100000001B3) & MASK
    return h


def uniform(name, n):
    """n values in [0, 1): splitmix64 of (fnv1a64(name) + k * golden), k = 1..n, top 53 bits."""
    with np.errstate(over="ignore"):
        z = np.uint64(fnv1a64(name)) + np.arange(1, n + 1, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53


def fill(name, shape):
    """Deterministic weights: He-scaled convolutions, BatchNorm near identity, small head."""
    n = int(np.prod(shape, dtype=np.int64)) if len(shape) else 1
    u = uniform(name, n)
    v = 2.0 * u - 1.0
    if name.endswith("num_batches_tracked"):
        return np.zeros(shape, np.int64)
    if name.endswith("conv.weight"):
        out = v * math.sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
    elif name.endswith("bn.weight"):
        out = 1.0 + 0.2 * v
    elif name.endswith("bn.bias") or name.endswith("running_mean"):
        out = 0.1 * v
    elif name.endswith("running_var"):
        out = 0.5 + u
    elif name == "fc.weight":
        out = v * math.sqrt(3.0 / shape[1])
    elif name == "fc.bias":
        out = 0.01 * v
    else:
        raise KeyError(name)
    return out.astype(np.float32).reshape(shape)


def exact_fid(mu1, s1, mu2, s2):
    import mpmath as mp
    mp.mp.dps = 60
    A, B = mp.matrix(s1.tolist()), mp.matrix(s2.tolist())
    ev = mp.eig(A * B, left=False, right=False)
    tr_sqrt = mp.fsum(mp.sqrt(max(mp.re(e), 0)) for e in ev)
    d = [mp.mpf(float(a)) - mp.mpf(float(b)) for a, b in zip(mu1, mu2)]
    val = mp.fsum(x * x for x in d) + mp.fsum(A[i, i] for i in range(A.rows)) \
        + mp.fsum(B[i, i] for i in range(B.rows)) - 2 * tr_sqrt
    return float(val)


def frechet_cases(fid_score):
    rng = np.random.default_rng(20240601)
    sym = lambda s: (s + s.T) / 2

    def wishart(d, n):
        a = rng.standard_normal((d, n))
        return sym(a @ a.T / n)

    def spectrum(d, logmax, logmin):
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return sym(q @ np.diag(np.logspace(logmax, logmin, d)) @ q.T)

    def cov(n, d):
        x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d))
        return np.mean(x, 0), sym(np.cov(x, rowvar=False))

    cases = []

    def add(name, mu1, s1, mu2, s2):
        cases.append(dict(name=name, mu1=mu1.tolist(), sigma1=s1.tolist(), mu2=mu2.tolist(), sigma2=s2.tolist(),
                          pytorch_fid=float(fid_score.calculate_frechet_distance(mu1, s1, mu2, s2)),
                          exact=exact_fid(mu1, s1, mu2, s2)))

    add("random_d16", rng.standard_normal(16), wishart(16, 40), rng.standard_normal(16), wishart(16, 40))
    # condition numbers 1e10: eigenvalues 1 .. 1e-10 and 10 .. 1e-9 in unrelated bases
    add("ill_conditioned_d24", 0.1 * rng.standard_normal(24), spectrum(24, 0, -10),
        0.1 * rng.standard_normal(24), spectrum(24, 1, -9))
    # 10 samples in 24 dimensions: both covariances singular (rank 9)
    m1, c1 = cov(10, 24)
    m2, c2 = cov(10, 24)
    add("rank_deficient_d24", m1, c1, m2, c2)
    # the distance is tiny compared with the traces: tests cancellation
    m1, c1 = rng.standard_normal(16), wishart(16, 64)
    add("nearly_identical_d16", m1, c1, m1 + 1e-6 * rng.standard_normal(16), sym(c1 + 1e-6 * wishart(16, 64)))

    feats = rng.standard_normal((40, 6)) @ rng.standard_normal((6, 6)) + rng.standard_normal(6)
    stats = dict(features=feats.tolist(), mu=np.mean(feats, 0).tolist(), sigma=np.cov(feats, rowvar=False).tolist())
    return dict(cases=cases, statistics=stats)


def npz_files():
    mu = np.arange(5) / 3.0
    sigma = 1.0 / (np.arange(5)[:, None] + np.arange(5)[None, :] + 1.0)  # Hilbert matrix
    feat32 = (np.arange(12).reshape(3, 4) / 7.0).astype(np.float32)
    fortran = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    labels = np.arange(4, dtype=np.int64)
    assert fortran.flags.f_contiguous
    np.savez("stats_savez.npz", mu=mu, sigma=sigma)
    np.savez_compressed("stats_savez_compressed.npz", mu=mu, sigma=sigma, feat32=feat32, fortran=fortran,
                        labels=labels)


def inception(src):
    import torch, torchvision
    if src:
        sys.path.insert(0, src)
    from pytorch_fid import inception as pfid

    # Build fid_inception_v3() exactly as pytorch-fid does, but with weights from `fill` instead of the
    # download: first capture the module to learn the names and shapes, then hand it the filled state dict.
    captured = {}
    real_load = torchvision.models.Inception3.load_state_dict
    torchvision.models.Inception3.load_state_dict = lambda self, sd, strict=True: captured.setdefault("m", self)
    pfid.load_state_dict_from_url = lambda *a, **k: None
    pfid.fid_inception_v3()
    torchvision.models.Inception3.load_state_dict = real_load
    sd = captured["m"].state_dict()
    with open("inception_state_dict.txt", "w") as f:
        for k, t in sd.items():
            f.write(f"{k}\t{','.join(map(str, t.shape))}\n")

    filled = {k: torch.from_numpy(fill(k, tuple(t.shape))) for k, t in sd.items()}
    pfid.load_state_dict_from_url = lambda *a, **k: filled
    model = pfid.InceptionV3([3], resize_input=True, normalize_input=False).eval()  # input already in [-1, 1]
    x = torch.from_numpy((2.0 * uniform("input", 2 * 3 * 64 * 64) - 1.0).astype(np.float32).reshape(2, 3, 64, 64))
    with torch.no_grad():
        f32 = model(x)[0].flatten(1).numpy().astype(np.float64)
        f64 = model.double()(x.double())[0].flatten(1).numpy()
    np.savez("inception_features.npz", features_f32=f32, features_f64=f64)
    print("inception: %d state-dict entries, %d parameters; feature mean %.4g std %.4g" % (
        len(sd), sum(t.numel() for t in sd.values()), f64.mean(), f64.std()))


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--pytorch-fid", default=None, help="pytorch-fid's src folder, when it is not installed")
    args = ap.parse_args()
    if args.pytorch_fid:
        sys.path.insert(0, args.pytorch_fid)
    from pytorch_fid import fid_score
    with open("frechet_cases.json", "w") as f:
        json.dump(frechet_cases(fid_score), f)
    npz_files()
    inception(args.pytorch_fid)
