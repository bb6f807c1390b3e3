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
    /// <summary>The grid's noise (rows * PerRow, C, H, W), one seed per image; rows = classes (or prompts), or PerRow for an unconditional teacher.</summary>
    public Tensor Z { get; }
    /// <summary>Row-major conditions: one-hot labels (rows * PerRow, classes) or text contexts; null for an unconditional teacher.</summary>
    public Tensor? Y { get; }
    /// <summary>The teacher's Heun samples from <see cref="Z"/> and <see cref="Y"/>, shaped as <see cref="Z"/>.</summary>
    public Tensor Teacher { get; }
    /// <summary>Images per row on each side (per class when conditional).</summary>
    public int PerRow { get; }
    readonly int rows;
    readonly int[] shape;
    readonly long firstSeed;
    readonly string[]? rowLabels;
    readonly Func<Tensor, Tensor>? decode;

    /// <summary>
    /// Samples the teacher part once: <paramref name="perRow"/> images per row (Heun, 2N-1 NFE) from noise seeds
    /// <paramref name="firstSeed"/>, +1, ...; <paramref name="teacher"/> is the teacher as the real score sees it
    /// (with its CFG scale), <paramref name="spec"/> gives the sample shape, <paramref name="conditions"/> the rows
    /// (classes, or prompts; null: the spec's classes), <paramref name="heunSteps"/> N on Karras levels from
    /// <paramref name="sigmaMax"/> to <paramref name="sigmaMin"/>, <paramref name="decode"/> turns latents into images
    /// (null: the samples are images).
    /// </summary>
    public DistillationGrid(IDenoiser teacher, NetworkSpec spec, int perRow = 6, int heunSteps = 18, long firstSeed = 0,
                            Conditions? conditions = null, Func<Tensor, Tensor>? decode = null,
                            double sigmaMin = KarrasSchedule.DefaultSigmaMin, double sigmaMax = KarrasSchedule.DefaultSigmaMax)
    {
        PerRow = perRow;
        (shape, this.firstSeed, this.decode) = (spec.SampleShape, firstSeed, decode);
        (Y, rows, rowLabels) = (conditions ?? Conditions.Classes(spec.LabelDim)).Grid(perRow);
        Z = ImageSampling.SeededNoise(spec.SampleShape, firstSeed, rows * perRow);
        using (no_grad())
        using (var scope = NewDisposeScope())
        {
            var parts = new List<Tensor>();
            for (int i = 0; i < Z.shape[0]; i += 64)
            {
                int j = (int)Math.Min(Z.shape[0], i + 64);
                parts.Add(Samplers.Heun(teacher, Z[i..j].to(teacher.Device), Y?[i..j].to(teacher.Device), heunSteps, sigmaMin, sigmaMax).Samples.cpu());
            }
            Teacher = cat(parts).MoveToOuterDisposeScope();
        }
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
        var teacher = Teacher;
        if (decode is not null) using (no_grad()) (teacher, student) = (decode(teacher).clamp(-1, 1), decode(student).clamp(-1, 1));
        var (c, h, w) = (teacher.shape[1], teacher.shape[2], teacher.shape[3]);
        var blank = ones(new long[] { rows, 1, c, h, w }); // a white tile between the halves
        var t = teacher.reshape(rows, PerRow, c, h, w);
        var s = student.reshape(rows, PerRow, c, h, w);
        var joined = cat(new[] { t, blank, s }, 1).reshape(-1, c, h, w);
        ImageGrid.Save(path, joined, columns: 2 * PerRow + 1, scale: 2, rowLabels: rowLabels);
    }

    /// <summary>Frees the noise, the labels and the teacher's samples.</summary>
    public void Dispose()
    {
        Z.Dispose(); Y?.Dispose(); Teacher.Dispose();
    }
}
