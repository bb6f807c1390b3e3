using Dmd.Diffusion;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>
/// Side-by-side pictures of a distillation: the teacher's 35-NFE Heun samples (computed once) on the left and
/// the one-step generator's samples from the same noise and labels on the right, one row per class, so grids
/// written during training show the student approaching the teacher image by image.
/// </summary>
internal sealed class DistillationGrid : IDisposable
{
    /// <summary>The grid's noise (rows * PerRow, C, H, W), one seed per image; rows = classes, or PerRow for an unconditional teacher.</summary>
    public Tensor Z { get; }
    /// <summary>Class-major one-hot labels (rows * PerRow, classes), or null for an unconditional teacher.</summary>
    public Tensor? Y { get; }
    /// <summary>The teacher's Heun samples from <see cref="Z"/> and <see cref="Y"/>, shaped as <see cref="Z"/>.</summary>
    public Tensor Teacher { get; }
    /// <summary>Images per row on each side (per class when conditional).</summary>
    public int PerRow { get; }
    readonly int rows;
    readonly int[] shape;
    readonly long firstSeed;

    /// <summary>
    /// Samples the teacher part once: <paramref name="perRow"/> images per class (Heun, 2N-1 NFE) from noise seeds
    /// <paramref name="firstSeed"/>, +1, ...; <paramref name="teacher"/> is the teacher as the real score sees it
    /// (with its CFG scale), <paramref name="spec"/> gives the image shape and classes, <paramref name="heunSteps"/> N.
    /// </summary>
    public DistillationGrid(IDenoiser teacher, NetworkSpec spec, int perRow = 6, int heunSteps = 18, long firstSeed = 0)
    {
        PerRow = perRow;
        (shape, this.firstSeed) = (spec.SampleShape, firstSeed);
        rows = spec.LabelDim > 0 ? spec.LabelDim : perRow;
        Z = ImageSampling.SeededNoise(spec.SampleShape, firstSeed, rows * perRow);
        Y = spec.LabelDim > 0 ? ImageSampling.ClassMajorLabels(spec.LabelDim, perRow) : null;
        using (no_grad())
        using (var scope = NewDisposeScope())
            Teacher = ImageSampling.Generate(teacher, Z, Y, "heun", heunSteps, batch: 64).Samples.MoveToOuterDisposeScope();
        Training.TrainingUtils.ReleaseFreedMemory();
    }

    /// <summary>The generator's samples for the grid's noise (all its steps, no gradient).</summary>
    public Tensor Student(OneStepGenerator g)
    {
        using var _ = no_grad();
        return g.GenerateInBatches(Z, Y, (int)Z.shape[0], stepNoise: OneStepGenerator.SeededStepNoise(shape, firstSeed, (int)Z.shape[0], g.Steps));
    }

    /// <summary>Writes teacher | student, one row per class, tiles enlarged twice.</summary>
    public void Save(string path, OneStepGenerator g)
    {
        using var scope = NewDisposeScope();
        var student = Student(g);
        var (c, h, w) = (Teacher.shape[1], Teacher.shape[2], Teacher.shape[3]);
        var blank = ones(new long[] { rows, 1, c, h, w }); // a white tile between the halves
        var t = Teacher.reshape(rows, PerRow, c, h, w);
        var s = student.reshape(rows, PerRow, c, h, w);
        var joined = cat(new[] { t, blank, s }, 1).reshape(-1, c, h, w);
        ImageGrid.Save(path, joined, columns: 2 * PerRow + 1, scale: 2,
                       rowLabels: Y is null ? null : Enumerable.Range(0, rows).Select(i => i.ToString()).ToArray());
    }

    /// <summary>Frees the noise, the labels and the teacher's samples.</summary>
    public void Dispose()
    {
        Z.Dispose(); Y?.Dispose(); Teacher.Dispose();
    }
}
