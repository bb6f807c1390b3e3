using System.Diagnostics;
using Dmd.Diffusion;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Cli;

/// <summary>
/// A model as `eval` and `bench` see it: a teacher with a multi-step sampler, or a DMD generator in one step.
/// </summary>
internal sealed record ModelDraw(string Path, EdmPrecond Net, NetworkSpec Spec, string Sampler, int Steps, double Guidance,
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

    public string Title => Sampler == "onestep" ? $"{System.IO.Path.GetFileName(Path)} (1 step)" : $"{System.IO.Path.GetFileName(Path)} ({Sampler}, {Nfe} NFE)";

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
