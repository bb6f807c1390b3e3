using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Dmd.IO;

/// <summary>Safetensors weights and JSON configs: the on-disk formats of every run.</summary>
internal static class Checkpoint
{
    /// <summary>The JSON options of every file the project writes: indented, fields included, enums as names, NaN and infinities allowed.</summary>
    public static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        IncludeFields = true,
        Converters = { new JsonStringEnumConverter() },
        NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    /// <summary>
    /// Checks before long work that a result file can be written where asked: its folder is created, a probe file is
    /// written and removed. A folder named as the file, a file named as its folder, or a folder without write
    /// permission is a one-line error naming <paramref name="option"/>, instead of work lost at the end.
    /// </summary>
    public static void EnsureWritableFile(string path, string option)
    {
        var full = Path.GetFullPath(path);
        if (Directory.Exists(full)) throw new DmdInputException($"{option} {path} is a folder; name a file, e.g. {Path.Combine(path, "result.json")}");
        EnsureWritableFolder(Path.GetDirectoryName(full)!, option);
    }

    /// <summary>The same check for an output folder (created if missing).</summary>
    public static void EnsureWritableFolder(string folder, string option)
    {
        if (File.Exists(folder)) throw new DmdInputException($"{option} {folder} is a file, not a folder; name a folder");
        try
        {
            Directory.CreateDirectory(folder);
            var probe = Path.Combine(folder, $".dmd-write-test-{Environment.ProcessId}");
            File.WriteAllText(probe, "");
            File.Delete(probe);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new DmdInputException($"{option}: cannot write to {folder} ({e.Message}); choose a folder you can write");
        }
    }

    /// <summary>Saves a module's state (parameters and buffers) as safetensors, atomically.</summary>
    public static void SaveModule(nn.Module module, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        string tmp = path + ".tmp";
        module.save_safetensors(tmp);
        File.Move(tmp, path, overwrite: true);
    }

    /// <summary>
    /// Loads safetensors weights into a module by name. Missing, unexpected or mis-shaped tensors are
    /// reported together in one clear error (unless <paramref name="strict"/> is false, where only
    /// mis-shaped tensors are an error and the rest is returned as a report). Tensors of the file named in
    /// <paramref name="ignore"/> are skipped (a checkpoint's stale buffers, e.g. CLIP's position_ids);
    /// <paramref name="rename"/> maps a file's tensor name to the model's (legacy names of an older writer) before matching.
    /// </summary>
    public static LoadReport LoadModule(nn.Module module, string path, bool strict = true, IReadOnlyCollection<string>? ignore = null,
                                        Func<string, string>? rename = null)
    {
        if (!File.Exists(path))
            throw new DmdInputException($"weights file not found: {path} (check the path, or train/convert the model first)");
        Dictionary<string, Tensor> loaded;
        try { loaded = Safetensors.LoadStateDict(path); }
        catch (Exception e) { throw new DmdInputException($"{path} is not a readable safetensors file ({e.Message}); re-save or re-convert it", e); }
        foreach (var k in ignore ?? Array.Empty<string>())
            if (loaded.Remove(k, out var skipped)) skipped.Dispose();
        if (rename is not null)
        {
            var renamed = new Dictionary<string, Tensor>();
            foreach (var (k, v) in loaded)
                if (!renamed.TryAdd(rename(k), v))
                    throw new DmdInputException($"{path} holds {rename(k)} twice, under its current and its legacy name ({k}); keep one");
            loaded = renamed;
        }

        var expected = module.state_dict();
        var report = new LoadReport(
            Missing: expected.Keys.Where(k => !loaded.ContainsKey(k)).ToList(),
            Unexpected: loaded.Keys.Where(k => !expected.ContainsKey(k)).ToList(),
            Misshaped: expected.Keys.Where(k => loaded.ContainsKey(k) && !loaded[k].shape.SequenceEqual(expected[k].shape))
                .Select(k => $"{k}: file [{string.Join(",", loaded[k].shape)}] vs model [{string.Join(",", expected[k].shape)}]").ToList());
        if (report.Misshaped.Count > 0 || (strict && !report.IsExact))
            throw new DmdInputException($"{path} does not match the model: {report}. Was it saved from a model with a different configuration?");
        using (no_grad())
            foreach (var (k, v) in loaded)
                if (expected.TryGetValue(k, out var dst)) dst.copy_(v);
        foreach (var v in loaded.Values) v.Dispose();
        return report;
    }

    /// <summary>Writes <paramref name="value"/> as JSON with <see cref="Json"/>, atomically (a .tmp file renamed), creating the folder.</summary>
    public static void SaveJson<T>(T value, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        File.WriteAllText(path + ".tmp", JsonSerializer.Serialize(value, Json));
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>Reads a JSON file with <see cref="Json"/>; a missing, empty or invalid file is a <see cref="DmdInputException"/> naming it.</summary>
    public static T LoadJson<T>(string path)
    {
        if (!File.Exists(path)) throw new DmdInputException($"file not found: {path}");
        try { return JsonSerializer.Deserialize<T>(File.ReadAllText(path), Json) ?? throw new JsonException("empty document"); }
        catch (JsonException e) { throw new DmdInputException($"{path} is not a valid {typeof(T).Name} JSON file: {e.Message}", e); }
    }

    /// <summary>Reading a user's settings file: a key the settings do not have is an error, not a silent default.</summary>
    public static readonly JsonSerializerOptions StrictJson = new(Json) { UnmappedMemberHandling = JsonUnmappedMemberHandling.Disallow };

    /// <summary>
    /// A settings record from a JSON file the user names (<c>--config</c>): either the record itself or a run's own
    /// <c>config.json</c>, whose settings sit under <c>"Config"</c>. Unknown keys are an error that names them.
    /// </summary>
    public static T LoadSettings<T>(string path)
    {
        if (!File.Exists(path)) throw new DmdInputException($"settings file not found: {path}");
        try
        {
            var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(path)) as System.Text.Json.Nodes.JsonObject
                       ?? throw new JsonException("the file does not hold a JSON object");
            bool ownProperty = typeof(T).GetProperty("Config") is not null;
            if (!ownProperty && node["Config"] is System.Text.Json.Nodes.JsonObject nested) node = nested; // a run's config.json
            return node.Deserialize<T>(StrictJson) ?? throw new JsonException("empty document");
        }
        catch (JsonException e)
        {
            var known = string.Join(", ", typeof(T).GetProperties().Where(p => p.CanWrite).Select(p => p.Name));
            throw new DmdInputException($"{path} is not a valid {typeof(T).Name} settings file: {e.Message} (keys it may hold: {known})", e);
        }
    }

    /// <summary>Saves named tensors as safetensors, atomically.</summary>
    public static void SaveTensors(Dictionary<string, Tensor> tensors, string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        Safetensors.SaveStateDict(path + ".tmp", tensors);
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>
    /// Loads every tensor of a safetensors file by name; a missing or unreadable file, or one that lacks a tensor named in
    /// <paramref name="required"/>, is a <see cref="DmdInputException"/>.
    /// </summary>
    public static Dictionary<string, Tensor> LoadTensors(string path, params string[] required)
    {
        if (!File.Exists(path)) throw new DmdInputException($"file not found: {path}");
        Dictionary<string, Tensor> d;
        try { d = Safetensors.LoadStateDict(path); }
        catch (Exception e) { throw new DmdInputException($"{path} is not a readable safetensors file ({e.Message})", e); }
        var missing = required.Where(k => !d.ContainsKey(k)).ToList();
        if (missing.Count > 0) throw new DmdInputException($"{path} lacks tensor(s) {string.Join(", ", missing)}");
        return d;
    }

    /// <summary>Random generator state as text for a JSON file.</summary>
    public static string GeneratorState(Generator g)
    {
        using var s = g.get_state();
        return Convert.ToBase64String(s.data<byte>().ToArray());
    }

    /// <summary>Sets a random generator's state from the text <see cref="GeneratorState"/> made.</summary>
    public static void RestoreGenerator(Generator g, string base64)
    {
        var bytes = Convert.FromBase64String(base64);
        using var t = torch.tensor(bytes, dtype: ScalarType.Byte);
        g.set_state(t);
    }
}

/// <summary>Differences between a weights file and a model.</summary>
internal sealed record LoadReport(List<string> Missing, List<string> Unexpected, List<string> Misshaped)
{
    /// <summary>True when no tensor is missing, unexpected or mis-shaped.</summary>
    public bool IsExact => Missing.Count == 0 && Unexpected.Count == 0 && Misshaped.Count == 0;

    /// <summary>"exact match", or the count of missing, unexpected and mis-shaped tensors, with up to six names each.</summary>
    public override string ToString()
    {
        static string List(List<string> l) => l.Count <= 6 ? string.Join("; ", l) : string.Join("; ", l.Take(6)) + $"; ... ({l.Count} in all)";
        var parts = new List<string>();
        if (Missing.Count > 0) parts.Add($"{Missing.Count} missing ({List(Missing)})");
        if (Unexpected.Count > 0) parts.Add($"{Unexpected.Count} unexpected ({List(Unexpected)})");
        if (Misshaped.Count > 0) parts.Add($"{Misshaped.Count} mis-shaped ({List(Misshaped)})");
        return parts.Count == 0 ? "exact match" : string.Join(", ", parts);
    }
}
