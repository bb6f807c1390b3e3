using Dmd.Diffusion;
using TorchSharp;
using static TorchSharp.torch;
using Dmd.Networks;

namespace Dmd.Distillation;

/// <summary>
/// The one-step generator G(z, y) = D_gen(sigma_max z, sigma_max, y) (DESIGN.md section 3).
/// Initialised from the teacher, it is at first exactly the teacher's one-step prediction from pure noise.
/// </summary>
public sealed class OneStepGenerator
{
    /// <summary>The generator's denoiser network (trained by DMD).</summary>
    public EdmPrecond Net { get; }
    /// <summary>The noise level the generator maps from: it denoises sigma_max z at noise level sigma_max (EDM's 80 by default).</summary>
    public double SigmaMax { get; }
    /// <summary>The network's description (set by <see cref="Load"/>; needed by <see cref="Sample"/>).</summary>
    public Networks.NetworkSpec? Spec { get; init; }

    /// <summary>Wraps a denoiser as G(z, y) = net(sigma_max z, sigma_max, y); <see cref="Spec"/> stays null unless set.</summary>
    public OneStepGenerator(EdmPrecond net, double sigmaMax = KarrasSchedule.DefaultSigmaMax)
    {
        Net = net;
        SigmaMax = sigmaMax;
    }

    /// <summary>
    /// Loads a distilled generator: a generator.safetensors (with its .json spec) or a folder holding one,
    /// e.g. <c>OneStepGenerator.Load("models/fashion-mnist-student")</c>.
    /// </summary>
    public static OneStepGenerator Load(string path)
    {
        var file = Networks.DenoiserFile.Resolve(path, FileName);
        var (net, spec) = Networks.DenoiserFile.Load(file);
        Training.TrainingUtils.Freeze(net);
        double sigmaMax = Networks.DenoiserFile.ReadExtra(file, SigmaMaxKey) ?? KarrasSchedule.DefaultSigmaMax; // older files: 80
        return new OneStepGenerator(net, sigmaMax) { Spec = spec };
    }

    /// <summary>The generator's file name in a run folder.</summary>
    public const string FileName = "generator.safetensors";
    const string SigmaMaxKey = "SigmaMax";

    /// <summary>Writes the generator as a loadable model: weights, the network's spec and the sigma_max it maps noise from.</summary>
    public void Save(string path, Networks.NetworkSpec spec) =>
        Networks.DenoiserFile.Save(Net, spec, path, new Dictionary<string, double> { [SigmaMaxKey] = SigmaMax });

    /// <summary>
    /// One image per requested class (or <paramref name="count"/> images of an unconditional model), in [-1, 1],
    /// shape (N, C, H, W); image i uses noise seed <paramref name="seed"/> + i as `dmd sample` does.
    /// <c>var images = OneStepGenerator.Load(dir).Sample(new[] { 0, 1, 9 });</c> then <c>ImageGrid.Save("out.png", images, 3)</c>.
    /// </summary>
    public Tensor Sample(IReadOnlyList<int>? classes = null, int count = 1, long seed = 0)
    {
        var spec = Spec ?? throw new InvalidOperationException("Sample needs the generator's spec: load it with OneStepGenerator.Load");
        int labelDim = Net.LabelDim;
        if (labelDim > 0 && classes is null) throw new ArgumentException($"the generator is class-conditional: give classes (0..{labelDim - 1})");
        if (classes?.FirstOrDefault(c => c < 0 || c >= labelDim, -1) is int bad and >= 0)
            throw new ArgumentException($"class {bad} is out of range: the generator has {labelDim} classes");
        int n = classes?.Count ?? count;
        var z = ImageSampling.SeededNoise(spec.SampleShape, seed, n);
        var y = labelDim > 0 ? Rng.OneHot(tensor(classes!.Select(c => (long)c).ToArray()), labelDim) : null;
        using var _ = no_grad();
        return Generate(z, y);
    }

    /// <summary>
    /// <see cref="Generate"/> over many samples, <paramref name="batch"/> at a time, without gradients, each batch in
    /// its own dispose scope; <paramref name="onBatch"/> gets (done, total) after each batch.
    /// </summary>
    public Tensor GenerateInBatches(Tensor z, Tensor? labels, int batch, Action<int, int>? onBatch = null)
    {
        var parts = new List<Tensor>();
        using var _ = no_grad();
        int n = (int)z.shape[0];
        for (int i = 0; i < n; i += batch)
        {
            int j = Math.Min(n, i + batch);
            using var scope = NewDisposeScope();
            parts.Add(Generate(z[i..j], labels?[i..j]).MoveToOuterDisposeScope());
            onBatch?.Invoke(j, n);
        }
        return parts.Count == 0 ? z.clone() : cat(parts);
    }

    /// <summary>Maps standard normal noise <paramref name="z"/> (and labels) to samples in one network evaluation.</summary>
    public Tensor Generate(Tensor z, Tensor? labels = null) =>
        Net.Denoise(z * DenoiserExtensions.Const(SigmaMax, z), DenoiserExtensions.Full(SigmaMax, z), labels);
}
