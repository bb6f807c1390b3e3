using System.Diagnostics;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Pipelines;

/// <summary>
/// A model as `eval`, `bench` and `sample` see it: a teacher with a multi-step sampler, or a DMD generator in one step
/// (at the sigma_max its file records).
/// </summary>
/// <param name="Path">The model file or run folder it was loaded from.</param>
/// <param name="Net">The denoiser (the generator's network for a generator).</param>
/// <param name="Spec">The network's description.</param>
/// <param name="Sampler">"onestep", "heun" or "euler".</param>
/// <param name="Steps">Sampler steps (multi-step samplers).</param>
/// <param name="Guidance">Classifier-free guidance scale of multi-step sampling (1 = none).</param>
/// <param name="SigmaMax">The noise level a generator maps from.</param>
public sealed record ModelDraw(string Path, EdmPrecond Net, NetworkSpec Spec, string Sampler, int Steps, double Guidance,
                                 double SigmaMax = KarrasSchedule.DefaultSigmaMax)
{
    /// <summary>Loads a model; the sampler defaults to one step for generator files and Heun otherwise.</summary>
    public static ModelDraw Load(string path, string? sampler, int steps, double guidance)
    {
        bool isGen = System.IO.Path.GetFileName(path).StartsWith("generator") ||
                     (Directory.Exists(path) && File.Exists(System.IO.Path.Combine(path, "generator.safetensors")));
        var which = sampler ?? (isGen ? "onestep" : "heun");
        if (which is not ("onestep" or "heun" or "euler")) throw new DmdInputException($"--sampler '{which}': use onestep, heun or euler");
        if (isGen)
        {
            var g = OneStepGenerator.Load(path);
            return new ModelDraw(path, g.Net, g.Spec!, which, steps, guidance, g.SigmaMax);
        }
        var (net, spec) = DenoiserFile.Load(path, "teacher.safetensors");
        return new ModelDraw(path, net, spec, which, steps, guidance);
    }

    /// <summary>A short name for tables: the file or folder and how it samples.</summary>
    public string Title => Sampler == "onestep" ? $"{System.IO.Path.GetFileName(Path)} (1 step)" : $"{System.IO.Path.GetFileName(Path)} ({Sampler}, {Nfe} NFE)";

    /// <summary>Network evaluations per sample.</summary>
    public int Nfe => Sampler switch { "onestep" => 1, "euler" => Steps, _ => 2 * Steps - 1 };

    /// <summary>Samples for noise z (and labels) in batches; returns them with the wall time in seconds.</summary>
    public (Tensor X, double Seconds) Draw(Tensor z, Tensor? y, int batch, Action<int, int>? onBatch = null)
    {
        var sw = Stopwatch.StartNew();
        Tensor x;
        if (Sampler == "onestep") x = new OneStepGenerator(Net, SigmaMax).GenerateInBatches(z, y, batch, onBatch);
        else x = ImageSampling.Generate(Net, z, y, Sampler, Steps, Guidance, batch, onBatch).Samples;
        return (x, sw.Elapsed.TotalSeconds);
    }
}
