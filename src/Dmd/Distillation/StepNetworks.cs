using Dmd.Diffusion;
using Dmd.Networks;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>
/// The raw network of a K-step generator with one copy of the teacher's raw network per step
/// (<see cref="DmdConfig.SeparateStepNetworks"/>): step k's inputs, at its noise level sigma_k, go to copy k. Not in DMD2,
/// whose K steps share one network; here each step gets the whole network, K times the generator's weights at the same
/// cost per image. Inside an <see cref="EdmPrecond"/> it sees c_noise = ln(sigma)/4, so it is told the levels
/// (<see cref="Bind"/>, which <see cref="OneStepGenerator"/> does) and refuses any other level. The copies are
/// <c>steps.0</c>, <c>steps.1</c>, ... in the weights' names.
/// </summary>
public sealed class StepNetworks : EdmBackbone
{
    private readonly ModuleList<EdmBackbone> steps;
    double[] levels = Array.Empty<double>(); // c_noise of each step

    /// <summary>K copies of <paramref name="spec"/>'s raw network, freshly initialised (K at least 2).</summary>
    public StepNetworks(NetworkSpec spec, int count) : base(nameof(StepNetworks))
    {
        if (count < 2) throw new ArgumentOutOfRangeException(nameof(count), count, "separate step networks need at least two steps");
        if (spec.IsLatent)
            throw new DmdInputException("separate-step-networks: a text-to-image generator's steps share its UNet; leave the option out");
        steps = new ModuleList<EdmBackbone>(Enumerable.Range(0, count).Select(_ => spec.BuildBackbone()).ToArray());
        RegisterComponents();
    }

    /// <summary>The number of copies (the generator's steps).</summary>
    public int Count => steps.Count;

    /// <summary>Copy <paramref name="k"/>, step k's raw network.</summary>
    public EdmBackbone this[int k] => steps[k];

    /// <inheritdoc/>
    public override int LabelDim => steps[0].LabelDim;

    /// <summary>Routes step k's noise level <paramref name="stepSigmas"/>[k] (decreasing, one per copy) to copy k.</summary>
    public void Bind(IReadOnlyList<double> stepSigmas)
    {
        if (stepSigmas.Count != Count)
            throw new DmdInputException($"a generator with {Count} step networks cannot sample on {stepSigmas.Count} noise levels; give it {Count} steps");
        levels = stepSigmas.Select(s => (double)(float)(Math.Log(s) / 4)).ToArray();
    }

    /// <summary>F(x, c_noise, labels), each sample by its level's copy; a level that is no step's is an <see cref="InvalidOperationException"/>.</summary>
    public override Tensor forward(Tensor x, Tensor cNoise, Tensor? labels)
    {
        if (levels.Length == 0) throw new InvalidOperationException("StepNetworks: Bind the generator's noise levels first (OneStepGenerator does)");
        var c = cNoise.detach().cpu().to_type(ScalarType.Float64).data<double>().ToArray();
        var step = c.Select(Step).ToArray();
        if (step.All(k => k == step[0])) return steps[step[0]].forward(x, cNoise, labels);
        using var scope = NewDisposeScope();
        var parts = new List<Tensor>();
        var order = new List<long>();
        foreach (int k in step.Distinct())
        {
            var rows = Enumerable.Range(0, step.Length).Where(i => step[i] == k).Select(i => (long)i).ToArray();
            var at = tensor(rows, device: x.device);
            parts.Add(steps[k].forward(x.index_select(0, at), cNoise.index_select(0, at), labels?.index_select(0, at)));
            order.AddRange(rows);
        }
        var back = tensor(order.ToArray(), device: x.device).argsort();
        return cat(parts, 0).index_select(0, back).MoveToOuterDisposeScope();
    }

    int Step(double cNoise)
    {
        for (int k = 0; k < levels.Length; k++)
            if (Math.Abs(cNoise - levels[k]) <= 1e-5 * Math.Max(1, Math.Abs(levels[k]))) return k;
        throw new InvalidOperationException($"a generator with separate step networks runs only at its steps' noise levels ({string.Join(", ", levels.Select(c => Math.Exp(4 * c).ToString("G4")))}), not at sigma {Math.Exp(4 * cNoise):G4}");
    }

    /// <summary>Sets every copy to <paramref name="source"/>'s weights (the teacher's, or a shared-network generator's).</summary>
    public void CopyToEach(EdmBackbone source)
    {
        foreach (var s in steps) Training.TrainingUtils.CopyWeights(source, s);
    }
}
