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
        if (!File.Exists(SpecPath(path)) && IsStableDiffusionSingleFile(path))
            throw new DmdInputException(SingleFileHint(path));
        return Checkpoint.LoadJson<NetworkSpec>(SpecPath(path));
    }

    /// <summary>The one-line advice for a Stable Diffusion single-file checkpoint passed where a model folder or file of this project is expected.</summary>
    public static string SingleFileHint(string path) =>
        $"{path} is a Stable Diffusion single-file checkpoint: convert it once with `dmd convert-sd {path} --out DIR --tokenizer TOKENIZER_DIR` and pass DIR";

    /// <summary>True when <paramref name="path"/> is a safetensors file whose tensors are named as SD's original checkpoints (<c>model.diffusion_model.*</c>); reads the header only.</summary>
    public static bool IsStableDiffusionSingleFile(string path)
    {
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase)) return false;
        try
        {
            using var f = File.OpenRead(path);
            var len = new byte[8];
            if (f.Read(len, 0, 8) != 8) return false;
            long n = BitConverter.ToInt64(len, 0);
            if (n <= 0 || n > 100_000_000 || n > f.Length - 8) return false;
            var header = new byte[n];
            f.ReadExactly(header);
            return System.Text.Encoding.UTF8.GetString(header).Contains("\"model.diffusion_model.", StringComparison.Ordinal);
        }
        catch (IOException) { return false; }
    }
}
