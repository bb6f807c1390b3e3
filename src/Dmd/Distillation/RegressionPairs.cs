using Dmd.Diffusion;
using Dmd.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>How the teacher produced a set of regression pairs (stored beside them).</summary>
public sealed record PairInfo(string Sampler, int Steps, int Nfe, double Guidance, long Seed, int Count);

/// <summary>
/// The regression set of DMD: noise z_ref, labels y_ref (one-hot or none), and the teacher's deterministic
/// ODE output x_ref = Heun(z_ref, y_ref). Stored as safetensors (z, x, y) with a JSON sidecar.
/// </summary>
public sealed class RegressionPairs
{
    public Tensor Z { get; }
    public Tensor X { get; }
    public Tensor? Y { get; }
    public PairInfo Info { get; }
    public long Count => Z.shape[0];

    public RegressionPairs(Tensor z, Tensor x, Tensor? y, PairInfo info)
    {
        if (!z.shape.SequenceEqual(x.shape)) throw new ArgumentException("z and x must have the same shape");
        Z = z; X = x; Y = y; Info = info;
    }

    /// <summary>
    /// Runs the teacher's deterministic Heun sampler from fresh noise, in batches, with progress reported
    /// after each batch (done, total).
    /// </summary>
    public static RegressionPairs Generate(IDenoiser teacher, int[] shape, int count, int steps = 18, double guidance = 1.0,
                                           long seed = 1, int batchSize = 1024, Action<int, int>? onBatch = null, Device? device = null)
    {
        using var g = new Generator((ulong)seed);
        var net = GuidedDenoiser.Wrap(teacher, guidance);
        var zs = new List<Tensor>(); var xs = new List<Tensor>(); var ys = new List<Tensor>();
        int nfe = 0;
        for (int done = 0; done < count;)
        {
            int b = Math.Min(batchSize, count - done);
            var z = Rng.Normal(new long[] { b }.Concat(shape.Select(s => (long)s)).ToArray(), g);
            var y = Rng.OneHotLabels(teacher.LabelDim, b, g);
            var r = Samplers.Heun(net, z.to(device ?? CPU), y?.to(device ?? CPU), steps);
            nfe = r.Nfe;
            zs.Add(z); xs.Add(r.Samples.cpu()); if (y is not null) ys.Add(y);
            done += b;
            onBatch?.Invoke(done, count);
        }
        return new RegressionPairs(cat(zs.ToArray()), cat(xs.ToArray()), ys.Count > 0 ? cat(ys.ToArray()) : null,
                                   new PairInfo("heun", steps, nfe, guidance, seed, count));
    }

    public void Save(string path)
    {
        var d = new Dictionary<string, Tensor> { ["z"] = Z.contiguous(), ["x"] = X.contiguous() };
        if (Y is not null) d["y"] = Y.contiguous();
        Checkpoint.SaveTensors(d, path);
        Checkpoint.SaveJson(Info, Path.ChangeExtension(path, ".json"));
    }

    public static RegressionPairs Load(string path)
    {
        if (!File.Exists(path)) throw new DmdInputException($"regression pairs not found: {path} (make them with `dmd pairs`)");
        var d = Checkpoint.LoadTensors(path, "z", "x");
        var info = Checkpoint.LoadJson<PairInfo>(Path.ChangeExtension(path, ".json"));
        return new RegressionPairs(d["z"], d["x"], d.GetValueOrDefault("y"), info);
    }
}
