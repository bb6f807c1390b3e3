using System.Text.Json.Nodes;
using Dmd.IO;
using static TorchSharp.torch;

namespace Dmd.Networks;

/// <summary>
/// A diffusers model folder (<c>config.json</c> + <c>diffusion_pytorch_model.safetensors</c>, as
/// <c>ModelMixin.save_pretrained</c> writes it): reads the fields a model implements, refuses the ones it does not,
/// and loads the weights by name with <see cref="Checkpoint.LoadModule"/>'s report.
/// </summary>
internal sealed class DiffusersConfig
{
    /// <summary>The weights file diffusers writes into a model folder.</summary>
    public const string WeightsName = "diffusion_pytorch_model.safetensors";

    private readonly JsonObject json;

    private DiffusersConfig(JsonObject json, string path, string className)
    {
        this.json = json;
        Path = path;
        ClassName = className;
    }

    /// <summary>The config.json this was read from (named in every error).</summary>
    public string Path { get; }

    /// <summary>The diffusers class the config must describe.</summary>
    public string ClassName { get; }

    /// <summary>Reads <c>config.json</c> of a model folder (or the file itself); its <c>_class_name</c>, when present, must be <paramref name="className"/>.</summary>
    public static DiffusersConfig Read(string folderOrFile, string className)
    {
        var path = Directory.Exists(folderOrFile) ? System.IO.Path.Combine(folderOrFile, "config.json") : folderOrFile;
        if (!File.Exists(path))
            throw new DmdInputException($"{className} config not found: {path} (pass a diffusers model folder, e.g. the unet/ or vae/ folder of a Stable Diffusion checkout)");
        JsonObject? obj;
        try { obj = JsonNode.Parse(File.ReadAllText(path)) as JsonObject; }
        catch (System.Text.Json.JsonException e) { throw new DmdInputException($"{path} is not valid JSON: {e.Message}", e); }
        if (obj is null) throw new DmdInputException($"{path} does not hold a JSON object");
        var cfg = new DiffusersConfig(obj, path, className);
        var cls = cfg.String("_class_name", className);
        if (cls != className) throw new DmdInputException($"{path}: _class_name is {cls}, expected {className} (is this the right model folder?)");
        return cfg;
    }

    /// <summary>An integer field, or <paramref name="fallback"/> when absent or null.</summary>
    public int Int(string name, int fallback) => Get(name, n => n.GetValue<int>(), fallback, "an integer");

    /// <summary>A number field, or <paramref name="fallback"/> when absent or null.</summary>
    public double Double(string name, double fallback) => Get(name, n => n.GetValue<double>(), fallback, "a number");

    /// <summary>A boolean field, or <paramref name="fallback"/> when absent or null.</summary>
    public bool Bool(string name, bool fallback) => Get(name, n => n.GetValue<bool>(), fallback, "true or false");

    /// <summary>A string field, or <paramref name="fallback"/> when absent or null.</summary>
    public string String(string name, string fallback) => Get(name, n => n.GetValue<string>(), fallback, "a string");

    /// <summary>A list of strings, or <paramref name="fallback"/> when absent or null.</summary>
    public string[] Strings(string name, string[] fallback) =>
        Get(name, n => n.AsArray().Select(e => e!.GetValue<string>()).ToArray(), fallback, "a list of strings");

    /// <summary>A list of integers (a single integer means that value <paramref name="count"/> times), or <paramref name="fallback"/>.</summary>
    public int[] Ints(string name, int[] fallback, int count = 1) =>
        Get(name, n => n is JsonArray a ? a.Select(e => e!.GetValue<int>()).ToArray() : Enumerable.Repeat(n.GetValue<int>(), count).ToArray(),
            fallback, "an integer or a list of integers");

    /// <summary>True when the field is present with a non-null value.</summary>
    public bool Has(string name) => json.TryGetPropertyValue(name, out var n) && n is not null;

    /// <summary>
    /// Refuses a field the model does not implement: present with a value other than <paramref name="implemented"/>
    /// (null, or absent, always passes) is a one-line <see cref="DmdInputException"/> naming the field.
    /// </summary>
    public void Refuse(string name, JsonNode? implemented)
    {
        if (!json.TryGetPropertyValue(name, out var n) || n is null) return;
        if (implemented is not null && JsonNode.DeepEquals(n, implemented)) return;
        if (implemented is JsonValue v && n is JsonValue nv && v.TryGetValue<double>(out var d) && nv.TryGetValue<double>(out var nd) && d == nd) return;
        throw Unsupported(name, n.ToJsonString(), implemented?.ToJsonString() ?? "null");
    }

    /// <summary>The one-line error for a field value the model does not implement.</summary>
    public DmdInputException Unsupported(string name, string value, string implemented) =>
        new($"{Path}: {name} = {value} is not implemented by this {ClassName} (it implements {implemented})");

    private T Get<T>(string name, Func<JsonNode, T> read, T fallback, string what)
    {
        if (!json.TryGetPropertyValue(name, out var n) || n is null) return fallback;
        try { return read(n); }
        catch (Exception e) when (e is InvalidOperationException or FormatException or NullReferenceException)
        {
            throw new DmdInputException($"{Path}: {name} = {n.ToJsonString()} should be {what}", e);
        }
    }

    /// <summary>
    /// Loads <c>diffusion_pytorch_model.safetensors</c> of a model folder into <paramref name="model"/> by name; a missing,
    /// unexpected or mis-shaped tensor is one <see cref="DmdInputException"/> naming it. <paramref name="rename"/> maps
    /// legacy names of older diffusers folders to the current ones.
    /// </summary>
    public static void LoadWeights(nn.Module model, string folder, Func<string, string>? rename = null)
    {
        var path = Directory.Exists(folder) ? System.IO.Path.Combine(folder, WeightsName) : folder;
        if (!File.Exists(path) && File.Exists(System.IO.Path.ChangeExtension(path, ".bin")))
            throw new DmdInputException($"{path} not found, only its pickled .bin: re-save the folder with safetensors (diffusers: save_pretrained(..., safe_serialization=True))");
        Checkpoint.LoadModule(model, path, rename: rename);
    }
}
