using Dmd.Diffusion;
using Dmd.IO;

namespace Dmd.Networks;

/// <summary>
/// A denoiser on disk: <c>NAME.safetensors</c> (weights, EDM parameter names) plus <c>NAME.json</c>
/// (the <see cref="NetworkSpec"/> that rebuilds the architecture).
/// </summary>
public static class DenoiserFile
{
    /// <summary>The spec file beside a weights file: the same path with the extension .json.</summary>
    public static string SpecPath(string weightsPath) => Path.ChangeExtension(weightsPath, ".json");

    /// <summary>
    /// Writes the weights and the spec; <paramref name="extra"/> adds settings of the model's use beside the spec's fields
    /// (a generator's sigma_max), which <see cref="ReadExtra"/> reads back and older readers ignore.
    /// </summary>
    public static void Save(EdmPrecond net, NetworkSpec spec, string weightsPath, IReadOnlyDictionary<string, double>? extra = null)
    {
        Checkpoint.SaveModule(net, weightsPath);
        var json = System.Text.Json.JsonSerializer.SerializeToNode(spec, Checkpoint.Json)!.AsObject();
        foreach (var (k, v) in extra ?? new Dictionary<string, double>()) json[k] = v;
        Checkpoint.SaveJson(json, SpecPath(weightsPath));
    }

    /// <summary>The weights file a path names: itself, or <paramref name="defaultName"/> inside a folder.</summary>
    public static string Resolve(string path, string defaultName) => Directory.Exists(path) ? Path.Combine(path, defaultName) : path;

    /// <summary>A setting <see cref="Save"/> wrote beside the spec, or null when the file has none (written before it was recorded).</summary>
    public static double? ReadExtra(string weightsPath, string key)
    {
        var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(SpecPath(weightsPath)));
        return node?[key]?.GetValue<double>();
    }

    /// <summary>Loads a denoiser saved by <see cref="Save"/>; a directory means its default file <paramref name="defaultName"/>.</summary>
    public static (EdmPrecond Net, NetworkSpec Spec) Load(string path, string defaultName = "teacher.safetensors")
    {
        path = Resolve(path, defaultName);
        var spec = LoadSpec(path);
        var net = spec.Build();
        Checkpoint.LoadModule(net, path);
        net.eval();
        return (net, spec);
    }

    /// <summary>The spec of a saved denoiser without building or loading the network (a directory means its default file).</summary>
    public static NetworkSpec LoadSpec(string path, string defaultName = "teacher.safetensors")
    {
        path = Resolve(path, defaultName);
        if (!File.Exists(path))
            throw new DmdInputException($"model not found: {path} (train one first, e.g. `dmd train-teacher`, or pass the .safetensors file)");
        return Checkpoint.LoadJson<NetworkSpec>(SpecPath(path));
    }
}
