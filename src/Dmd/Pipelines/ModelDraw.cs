using System.Diagnostics;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// A model as `eval`, `bench` and `sample` see it: a teacher with a multi-step sampler, or a DMD generator (one step, or
/// its K trained steps, at the noise levels its file records).
/// </summary>
/// <param name="Path">The model file or run folder it was loaded from.</param>
/// <param name="Net">The denoiser (the generator's network for a generator).</param>
/// <param name="Spec">The network's description.</param>
/// <param name="Sampler">"onestep" (a generator, however many steps it has), "heun" or "euler".</param>
/// <param name="Steps">Sampler steps: of the multi-step samplers, or of a generator (1..its trained steps).</param>
/// <param name="Guidance">Classifier-free guidance scale of multi-step sampling (1 = none).</param>
/// <param name="Generator">The generator when the model is one, else null.</param>
public sealed record ModelDraw(string Path, EdmPrecond Net, NetworkSpec Spec, string Sampler, int Steps, double Guidance,
                                 OneStepGenerator? Generator = null)
{
    /// <summary>The noise levels where multi-step sampling applies its guidance (null = all).</summary>
    public GuidanceInterval? GuidanceInterval { get; init; }

    /// <summary>
    /// A teacher that takes over after a K-step generator's first <see cref="Steps"/> steps (null = none): the generator's
    /// output re-noised to its next level, as its own chain would, then the teacher's Heun from that level to 0 in
    /// <see cref="FinishSteps"/> steps, with <see cref="Guidance"/> and <see cref="GuidanceInterval"/>. It shows where
    /// along the chain a student falls behind its teacher. See <see cref="FinishedBy"/>.
    /// </summary>
    public EdmPrecond? Finisher { get; init; }
    /// <summary>Where <see cref="Finisher"/> was loaded from.</summary>
    public string? FinisherPath { get; init; }
    /// <summary>Heun steps of <see cref="Finisher"/>.</summary>
    public int FinishSteps { get; init; }

    /// <summary>
    /// This generator's first <see cref="Steps"/> steps (fewer than it was trained for), then the teacher at
    /// <paramref name="teacherPath"/> from the next level: Heun in <paramref name="steps"/> steps with guidance
    /// <paramref name="guidance"/> (only at sigma in <paramref name="interval"/> when given).
    /// </summary>
    public ModelDraw FinishedBy(string teacherPath, int steps, double guidance, GuidanceInterval? interval, Device? device = null)
    {
        if (Generator is null) throw new DmdInputException($"--finish-with: --model {Path} is not a generator; the teacher takes over from a K-step generator's first steps");
        if (Steps >= Generator.Steps)
            throw new DmdInputException($"--finish-with: give --steps k below the generator's {Generator.Steps} (the teacher takes over at level k + 1)");
        Settings.AtLeast("finish-steps", steps, 1);
        if (interval is not null && !interval.Guides(guidance)) throw new DmdInputException($"--guidance-interval {interval}: give --guidance other than 1 for the finishing teacher");
        var (net, spec) = DenoiserFile.Load(teacherPath, "teacher.safetensors");
        if (!spec.SampleShape.SequenceEqual(Spec.SampleShape) || spec.LabelDim != Spec.LabelDim)
            throw new DmdInputException($"--finish-with {teacherPath}: its samples ([{string.Join(",", spec.SampleShape)}], {spec.LabelDim} classes) are not the generator's ([{string.Join(",", Spec.SampleShape)}], {Spec.LabelDim} classes)");
        if (device is not null) net.to(device);
        net.eval();
        Training.TrainingUtils.Freeze(net);
        return this with { Finisher = net, FinisherPath = teacherPath, FinishSteps = steps, Guidance = guidance, GuidanceInterval = interval };
    }

    /// <summary>
    /// This K-step generator sampled with another share of carried noise between its steps
    /// (<see cref="OneStepGenerator.StepNoiseCarry"/>) than the one it was trained with; null keeps its own.
    /// </summary>
    public ModelDraw WithStepNoiseCarry(double? carry)
    {
        if (carry is not double c) return this;
        if (Generator is null || Generator.Steps == 1)
            throw new DmdInputException($"--step-noise-carry: {Path} is not a K-step generator; only the noise between a K-step generator's steps can be carried");
        return this with { Generator = Generator.WithStepNoiseCarry(c) };
    }

    /// <summary>The noise level where <see cref="Finisher"/> takes over.</summary>
    public double FinishSigma => Generator!.Sigmas[Steps];

    /// <summary>Heun steps when none are given: 18 (35 NFE, EDM's CIFAR-10 setting).</summary>
    public const int DefaultTeacherSteps = 18;

    /// <summary>
    /// Loads a model; the sampler defaults to the generator's own steps for generator files and Heun otherwise;
    /// <paramref name="steps"/> null = the generator's trained steps, or <see cref="DefaultTeacherSteps"/> for a teacher.
    /// The network is moved to <paramref name="device"/> (CPU by default); samples come back on the CPU. With
    /// <paramref name="interval"/> a multi-step sampler guides only at those noise levels.
    /// </summary>
    public static ModelDraw Load(string path, string? sampler, int? steps, double guidance, Device? device = null, GuidanceInterval? interval = null)
    {
        var draw = LoadOnCpu(path, sampler, steps, guidance);
        if (interval is not null && draw.Sampler == "onestep")
            throw new DmdInputException($"--guidance-interval {interval}: it limits the guidance of a multi-step sampler, and {path} samples in one step without guidance; leave it out, or give a teacher (or --sampler heun/euler)");
        if (interval is not null && !interval.Guides(guidance))
            throw new DmdInputException($"--guidance-interval {interval}: it limits the guidance of a multi-step sampler; give --guidance other than 1");
        if (device is not null) draw.Net.to(device);
        return draw with { GuidanceInterval = interval };
    }

    static ModelDraw LoadOnCpu(string path, string? sampler, int? steps, double guidance)
    {
        bool isGen = IsGenerator(path);
        var which = sampler ?? (isGen ? "onestep" : "heun");
        if (which is not ("onestep" or "heun" or "euler")) throw new DmdInputException($"--sampler '{which}': use onestep, heun or euler");
        if (isGen)
        {
            var g = OneStepGenerator.Load(path);
            if (which == "onestep")
            {
                if (guidance != 1)
                    throw new DmdInputException($"--guidance {guidance:G}: a generator samples without guidance (its guidance is the one it was distilled with); leave the option out, or give --sampler heun to use its network as a denoiser");
                return new ModelDraw(path, g.Net, g.Spec!, which, g.CheckSteps(steps), guidance, g);
            }
            if (g.StepNetworkCount > 0)
                throw new DmdInputException($"--sampler {which}: {path} has a network per step, each trained at its own noise level only, so it is no denoiser at every level; sample it with --sampler onestep");
            return new ModelDraw(path, g.Net, g.Spec!, which, steps ?? DefaultTeacherSteps, guidance); // its network as a denoiser
        }
        if (which == "onestep") throw new DmdInputException($"--sampler onestep needs a generator (generator.safetensors); {path} is a teacher: use heun or euler");
        var (net, spec) = DenoiserFile.Load(path, "teacher.safetensors");
        return new ModelDraw(path, net, spec, which, steps ?? DefaultTeacherSteps, guidance);
    }

    /// <summary>Whether a path names a DMD generator (a generator*.safetensors file, a folder holding generator.safetensors, or a distillation run's checkpoint).</summary>
    public static bool IsGenerator(string path) =>
        System.IO.Path.GetFileName(path).StartsWith("generator") ||
        (Directory.Exists(path) && File.Exists(System.IO.Path.Combine(path, OneStepGenerator.FileName))) ||
        DistillCheckpoint.Locate(path) is not null;

    /// <summary>A short name for tables: the file or folder and how it samples.</summary>
    public string Title => Finisher is not null
        ? $"{System.IO.Path.GetFileName(Path)} ({Steps} step{(Steps == 1 ? "" : "s")}, then the teacher's Heun {FinishSteps} from sigma {FinishSigma:G4})"
        : Sampler == "onestep"
        ? $"{System.IO.Path.GetFileName(Path)} ({Steps} step{(Steps == 1 ? "" : "s")}{CarryNote})"
        : $"{System.IO.Path.GetFileName(Path)} ({Sampler}, {Nfe} NFE)";

    /// <summary>How it samples, for messages: "heun", "euler", "one-step generator" or "K-step generator" (", step-noise carry C" with one).</summary>
    public string SamplerName => Sampler != "onestep" ? Sampler : Steps == 1 ? "one-step generator" : $"{Steps}-step generator{CarryNote}";

    /// <summary>", step-noise carry C" for a K-step generator sampled with one, else empty.</summary>
    string CarryNote => Generator is { StepNoiseCarry: > 0 } g && Steps > 1
        ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $", step-noise carry {g.StepNoiseCarry:G4}") : "";

    /// <summary>Network evaluations per sample.</summary>
    public int Nfe => Sampler switch { "onestep" => Steps + (Finisher is null ? 0 : 2 * FinishSteps - 1), "euler" => Steps, _ => 2 * Steps - 1 };

    /// <summary>
    /// Samples for noise z (and labels) in batches; returns them with the wall time in seconds. A generator of more than
    /// one step re-injects noise between steps: <see cref="OneStepGenerator.SeededStepNoise"/> for images seeded
    /// <paramref name="seed"/> + i.
    /// </summary>
    public (Tensor X, double Seconds) Draw(Tensor z, Tensor? y, int batch, Action<int, int>? onBatch = null, long seed = 0)
    {
        var sw = Stopwatch.StartNew();
        Tensor x;
        if (Generator is not null && Finisher is not null)
        {
            // the noise of the full chain's steps 2..k+1: the (k+1)-th re-noises the k-th output to the teacher's start
            var noise = OneStepGenerator.SeededStepNoise(Spec.SampleShape, seed, (int)z.shape[0], Steps + 1);
            var teacher = GuidedDenoiser.Wrap(Finisher, Guidance, GuidanceInterval);
            var sigmas = KarrasSchedule.Sigmas(FinishSteps, KarrasSchedule.DefaultSigmaMin, FinishSigma);
            x = Generator.GenerateInBatches(z, y, batch, onBatch, noise, Steps, (start, labels) => Samplers.Heun(teacher, start, labels, sigmas).Samples);
        }
        else if (Generator is not null && Sampler == "onestep")
        {
            var noise = OneStepGenerator.SeededStepNoise(Spec.SampleShape, seed, (int)z.shape[0], Steps);
            x = Generator.GenerateInBatches(z, y, batch, onBatch, noise, Steps);
        }
        else x = ImageSampling.Generate(Net, z, y, Sampler, Steps, Guidance, batch, onBatch, GuidanceInterval).Samples;
        return (x, sw.Elapsed.TotalSeconds);
    }

    /// <summary>Refuses a class index the model does not have (any index for an unconditional model is ignored).</summary>
    void CheckClass(int? classIndex)
    {
        if (classIndex is int c && Spec.LabelDim > 0 && (c < 0 || c >= Spec.LabelDim))
            throw new DmdInputException($"--class {c} is out of range: the model has {Spec.LabelDim} classes (0..{Spec.LabelDim - 1})");
    }

    /// <summary>
    /// `dmd sample` for point data: <paramref name="count"/> samples whose noise, then labels (class <paramref name="classIndex"/>,
    /// or uniform), come from one generator seeded <paramref name="seed"/>, in batches of <paramref name="batch"/>; writes
    /// them as CSV (with a label column for a conditional model) and, for 2 or more coordinates, a scatter plot beside it
    /// (.png). Returns the samples/s.
    /// </summary>
    public double WritePoints(string csvPath, int count, int? classIndex, long seed, int batch)
    {
        CheckClass(classIndex);
        if (count < 1 || batch < 1) throw new DmdInputException("--n and --batch must be positive");
        Checkpoint.EnsureWritableFile(csvPath, "--out");
        using var g = new Generator((ulong)seed);
        var z = Rng.Normal(new long[] { count }.Concat(Spec.SampleShape.Select(s => (long)s)).ToArray(), g);
        Tensor? y = Spec.LabelDim == 0 ? null
            : classIndex is int c ? Rng.OneHot(full(count, c, ScalarType.Int64), Spec.LabelDim) : Rng.OneHotLabels(Spec.LabelDim, count, g);
        var (x, secs) = Draw(z, y, batch, seed: seed);
        var flat = x.reshape(count, -1);
        Data.PointSet.ToCsv(csvPath, flat, y?.argmax(1));
        if (flat.shape[1] >= 2) Plots.ScatterPanels(System.IO.Path.ChangeExtension(csvPath, ".png"), new[] { ($"{Sampler}, {Nfe} NFE", flat) }, flat);
        return count / secs;
    }

    /// <summary>
    /// `dmd sample` for images: image i from noise seed <paramref name="seed"/> + i; a conditional model without
    /// <paramref name="classIndex"/> gets whole rows, one per class (<paramref name="count"/> rounded up), else a square-ish
    /// grid. Writes the grid (tiles enlarged <paramref name="scale"/> times) to <paramref name="pngPath"/> and with
    /// <paramref name="each"/> one PNG per image, named by its seed, into a folder named after it.
    /// </summary>
    public ImageSampleResult WriteImages(string pngPath, int count, int? classIndex, long seed, int batch, int scale, bool each,
                                         Action<int, int>? onBatch = null)
    {
        CheckClass(classIndex);
        if (count < 1 || batch < 1 || scale < 1) throw new DmdInputException("--n, --batch and --scale must be positive");
        if (!pngPath.EndsWith(".png", StringComparison.OrdinalIgnoreCase)) pngPath = System.IO.Path.ChangeExtension(pngPath, ".png");
        Checkpoint.EnsureWritableFile(pngPath, "--out");
        bool rows = Spec.LabelDim > 0 && classIndex is null;
        int perClass = rows ? (count + Spec.LabelDim - 1) / Spec.LabelDim : 0;
        if (rows) count = perClass * Spec.LabelDim;
        var z = ImageSampling.SeededNoise(Spec.SampleShape, seed, count);
        Tensor? y = Spec.LabelDim == 0 ? null
            : rows ? ImageSampling.ClassMajorLabels(Spec.LabelDim, perClass)
            : Rng.OneHot(full(count, classIndex!.Value, ScalarType.Int64), Spec.LabelDim);
        var (images, secs) = Draw(z, y, batch, onBatch, seed);
        int columns = rows ? perClass : (int)Math.Ceiling(Math.Sqrt(count));
        ImageGrid.Save(pngPath, images, columns, scale, rowLabels: rows ? Enumerable.Range(0, Spec.LabelDim).Select(c => c.ToString()).ToArray() : null);
        string? folder = null;
        if (each)
        {
            folder = System.IO.Path.Combine(System.IO.Path.GetDirectoryName(System.IO.Path.GetFullPath(pngPath))!, System.IO.Path.GetFileNameWithoutExtension(pngPath));
            ImageGrid.SaveEach(folder, images, first: (int)seed); // named by seed, as EDM
        }
        return new ImageSampleResult(pngPath, count, count / secs, folder);
    }
}

/// <summary>What <see cref="ModelDraw.WriteImages"/> wrote: the grid, the number of images (rounded up to whole rows),
/// images/s, and the folder of single PNGs (or null).</summary>
public sealed record ImageSampleResult(string GridPath, int Count, double ImagesPerSecond, string? EachFolder);
