using Dmd.Diffusion;
using Dmd.IO;
using static TorchSharp.torch;

namespace Dmd.Training;

/// <summary>The class-per-row sample grids that training runs and the <c>sample</c> command write.</summary>
public static class ClassGrid
{
    /// <summary>
    /// Samples a grid with one row per class (<paramref name="perClass"/> images each; one square-ish block for an
    /// unconditional model) from seeds firstSeed, firstSeed + 1, ... and writes it as a PNG. The same seeds give
    /// the same noise, so grids written during training show the same images getting better.
    /// </summary>
    /// <returns>The NFE per image and the images per second of the sampling.</returns>
    public static (int Nfe, double ImagesPerSecond) Save(string path, IDenoiser net, int[] shape, int perClass,
        string sampler = "heun", int steps = 10, double guidance = 1.0, long firstSeed = 0,
        IReadOnlyList<string>? classNames = null, int scale = 1)
    {
        using var scope = NewDisposeScope();
        int classes = net.LabelDim, count = classes > 0 ? classes * perClass : perClass * perClass;
        var z = ImageSampling.SeededNoise(shape, firstSeed, count);
        var y = classes > 0 ? ImageSampling.ClassMajorLabels(classes, perClass) : null;
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var res = ImageSampling.Generate(net, z, y, sampler, steps, guidance);
        double rate = count / Math.Max(1e-9, clock.Elapsed.TotalSeconds);
        ImageGrid.Save(path, res.Samples, columns: perClass, scale: scale,
                       rowLabels: classes > 0 ? classNames ?? Enumerable.Range(0, classes).Select(c => c.ToString()).ToArray() : null);
        scope.Dispose();
        TrainingUtils.ReleaseFreedMemory(); // sampling peaks above training: do not keep that memory
        return (res.Nfe, rate);
    }
}
