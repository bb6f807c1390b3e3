using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Diffusion;

/// <summary>
/// Drawing many images from a denoiser: one noise seed per image (as EDM's generate.py <c>--seeds</c>, so an
/// image does not depend on the batch it ran in), batched sampling and class-major labels (the grids that training
/// and the <c>sample</c> command write are ClassGrid, in Training).
/// </summary>
public static class ImageSampling
{
    /// <summary>Noise (count, shape...) where image i is drawn from its own generator seeded with firstSeed + i.</summary>
    public static Tensor SeededNoise(int[] shape, long firstSeed, int count)
    {
        var one = shape.Select(s => (long)s).ToArray();
        var rows = new Tensor[count];
        using var scope = NewDisposeScope();
        for (int i = 0; i < count; i++)
        {
            using var g = new Generator((ulong)(firstSeed + i));
            rows[i] = randn(one, generator: g);
        }
        return count == 0 ? zeros(new long[] { 0 }.Concat(one).ToArray()).MoveToOuterDisposeScope()
                          : stack(rows).MoveToOuterDisposeScope();
    }

    /// <summary>Class-major one-hot labels: <paramref name="perClass"/> rows of class 0, then of class 1, ...</summary>
    public static Tensor ClassMajorLabels(int labelDim, int perClass) =>
        Rng.OneHot(arange(labelDim, dtype: ScalarType.Int64).repeat_interleave(perClass), labelDim);

    /// <summary>
    /// Runs a multi-step sampler ("heun" or "euler") with classifier-free guidance scale <paramref name="guidance"/>
    /// (only at the noise levels of <paramref name="interval"/> when one is given) over <paramref name="z"/> in batches of
    /// <paramref name="batch"/>; returns all samples and the NFE per sample.
    /// Each batch runs on the network's device (<see cref="IDenoiser.Device"/>); the samples come back on z's.
    /// </summary>
    public static SampleResult Generate(IDenoiser net, Tensor z, Tensor? labels, string sampler, int steps, double guidance = 1.0,
                                        int batch = 256, Action<int, int>? onBatch = null, GuidanceInterval? interval = null)
    {
        var d = GuidedDenoiser.Wrap(net, guidance, interval);
        int n = (int)z.shape[0], nfe = 0;
        var parts = new List<Tensor>();
        for (int i = 0; i < n; i += batch)
        {
            int j = Math.Min(n, i + batch);
            var res = Samplers.Run(sampler, d, z[i..j].to(net.Device), labels?[i..j].to(net.Device), steps);
            parts.Add(res.Samples.to(z.device)); // the network's device holds one batch at a time
            nfe = res.Nfe;
            onBatch?.Invoke(j, n);
        }
        return new SampleResult(parts.Count == 0 ? z.clone() : cat(parts), nfe);
    }
}
