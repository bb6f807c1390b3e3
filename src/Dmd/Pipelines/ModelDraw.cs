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
    /// <summary>Heun steps when none are given: 18 (35 NFE, EDM's CIFAR-10 setting).</summary>
    public const int DefaultTeacherSteps = 18;

    /// <summary>
    /// Loads a model; the sampler defaults to the generator's own steps for generator files and Heun otherwise;
    /// <paramref name="steps"/> null = the generator's trained steps, or <see cref="DefaultTeacherSteps"/> for a teacher.
    /// </summary>
    public static ModelDraw Load(string path, string? sampler, int? steps, double guidance)
    {
        bool isGen = IsGenerator(path);
        var which = sampler ?? (isGen ? "onestep" : "heun");
        if (which is not ("onestep" or "heun" or "euler")) throw new DmdInputException($"--sampler '{which}': use onestep, heun or euler");
        if (isGen)
        {
            var g = OneStepGenerator.Load(path);
            if (which == "onestep") return new ModelDraw(path, g.Net, g.Spec!, which, g.CheckSteps(steps), guidance, g);
            return new ModelDraw(path, g.Net, g.Spec!, which, steps ?? DefaultTeacherSteps, guidance); // its network as a denoiser
        }
        if (which == "onestep") throw new DmdInputException($"--sampler onestep needs a generator (generator.safetensors); {path} is a teacher: use heun or euler");
        var (net, spec) = DenoiserFile.Load(path, "teacher.safetensors");
        return new ModelDraw(path, net, spec, which, steps ?? DefaultTeacherSteps, guidance);
    }

    /// <summary>Whether a path names a DMD generator (a generator*.safetensors file, or a folder holding generator.safetensors).</summary>
    public static bool IsGenerator(string path) =>
        System.IO.Path.GetFileName(path).StartsWith("generator") ||
        (Directory.Exists(path) && File.Exists(System.IO.Path.Combine(path, OneStepGenerator.FileName)));

    /// <summary>A short name for tables: the file or folder and how it samples.</summary>
    public string Title => Sampler == "onestep"
        ? $"{System.IO.Path.GetFileName(Path)} ({Steps} step{(Steps == 1 ? "" : "s")})"
        : $"{System.IO.Path.GetFileName(Path)} ({Sampler}, {Nfe} NFE)";

    /// <summary>Network evaluations per sample.</summary>
    public int Nfe => Sampler switch { "onestep" => Steps, "euler" => Steps, _ => 2 * Steps - 1 };

    /// <summary>
    /// Samples for noise z (and labels) in batches; returns them with the wall time in seconds. A generator of more than
    /// one step re-injects noise between steps: <see cref="OneStepGenerator.SeededStepNoise"/> for images seeded
    /// <paramref name="seed"/> + i.
    /// </summary>
    public (Tensor X, double Seconds) Draw(Tensor z, Tensor? y, int batch, Action<int, int>? onBatch = null, long seed = 0)
    {
        var sw = Stopwatch.StartNew();
        Tensor x;
        if (Generator is not null && Sampler == "onestep")
        {
            var noise = OneStepGenerator.SeededStepNoise(Spec.SampleShape, seed, (int)z.shape[0], Steps);
            x = Generator.GenerateInBatches(z, y, batch, onBatch, noise, Steps);
        }
        else x = ImageSampling.Generate(Net, z, y, Sampler, Steps, Guidance, batch, onBatch).Samples;
        return (x, sw.Elapsed.TotalSeconds);
    }
}
