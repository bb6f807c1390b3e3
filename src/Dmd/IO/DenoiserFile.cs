using Dmd.Diffusion;
using Dmd.Networks;

namespace Dmd.IO;

/// <summary>
/// A denoiser on disk: <c>NAME.safetensors</c> (weights, EDM parameter names) plus <c>NAME.json</c>
/// (the <see cref="NetworkSpec"/> that rebuilds the architecture).
/// </summary>
public static class DenoiserFile
{
    public static string SpecPath(string weightsPath) => Path.ChangeExtension(weightsPath, ".json");

    public static void Save(EdmPrecond net, NetworkSpec spec, string weightsPath)
    {
        Checkpoint.SaveModule(net, weightsPath);
        Checkpoint.SaveJson(spec, SpecPath(weightsPath));
    }

    /// <summary>Loads a denoiser saved by <see cref="Save"/>; a directory means its default file <paramref name="defaultName"/>.</summary>
    public static (EdmPrecond Net, NetworkSpec Spec) Load(string path, string defaultName = "teacher.safetensors")
    {
        if (Directory.Exists(path)) path = Path.Combine(path, defaultName);
        if (!File.Exists(path))
            throw new DmdInputException($"model not found: {path} (train one first, e.g. `dmd train-teacher`, or pass the .safetensors file)");
        var spec = Checkpoint.LoadJson<NetworkSpec>(SpecPath(path));
        var net = spec.Build();
        Checkpoint.LoadModule(net, path);
        net.eval();
        return (net, spec);
    }
}
