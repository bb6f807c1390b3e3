using System.Runtime.InteropServices;
using System.Security.Cryptography;
using Dmd.IO;
using TorchSharp;
using TorchSharp.Modules;
using TorchSharp.PyBridge;
using static TorchSharp.torch;

namespace Dmd.Training;

/// <summary>
/// A run's checkpoints as atomic units. Each checkpoint is a folder <c>checkpoint/step-NNNNNNNN/</c>, written as
/// <c>step-NNNNNNNN.partial/</c> first: every file is flushed to disk and listed with its size and SHA-256 in
/// <c>manifest.json</c>, the folder is renamed, and only then does the one-line pointer file <c>checkpoint/latest</c>
/// switch to it (written beside it and renamed over it). Older step folders are removed after the switch. A kill or a
/// full disk at any moment therefore leaves <c>latest</c> naming a complete checkpoint (the new one or the previous
/// one), and loading checks every file against the manifest. Checkpoints of earlier versions (files directly in
/// <c>checkpoint/</c>, <c>state.json</c> last) still load.
/// </summary>
internal sealed class CheckpointStore
{
    const string Pointer = "latest";
    const string ManifestName = "manifest.json";

    /// <summary>Test hook: called after each file of a checkpoint is on disk, with its name; a throw there is a crash.</summary>
    internal static Action<string>? AfterFileWritten { get; set; }

    /// <summary>The folder holding the checkpoints (<c>RUN/checkpoint</c>).</summary>
    public string Root { get; }

    /// <summary>The checkpoints of the run in <paramref name="runDir"/>, kept in <c>runDir/checkpoint</c> (created by the first <see cref="Save"/>).</summary>
    public CheckpointStore(string runDir) => Root = Path.Combine(runDir, "checkpoint");

    /// <summary>Whether the run folder holds a checkpoint to resume from (current or older layout).</summary>
    public bool Exists => File.Exists(Path.Combine(Root, Pointer)) || File.Exists(Path.Combine(Root, "state.json"));

    /// <summary>Writes the checkpoint of <paramref name="step"/> through <paramref name="write"/>, then makes it the latest.</summary>
    public void Save(int step, Action<CheckpointWriter> write)
    {
        Directory.CreateDirectory(Root);
        string name = $"step-{step:D8}";
        if (ReadPointer() == name) return; // this step is already the latest checkpoint (a run is deterministic)
        FileSync.WholeFolder(Path.Combine(Root, name + ".partial"), Path.Combine(Root, name), partial =>
        {
            var writer = new CheckpointWriter(partial);
            write(writer);
            writer.WriteManifest(step);
        });
        AfterFileWritten?.Invoke(name + "/");
        string tmp = Path.Combine(Root, Pointer + ".tmp");
        File.WriteAllText(tmp, name + "\n");
        FileSync.File(tmp);
        File.Move(tmp, Path.Combine(Root, Pointer), overwrite: true);
        FileSync.Directory(Root);
        AfterFileWritten?.Invoke(Pointer);
        RemoveAllBut(name);
    }

    /// <summary>The latest complete checkpoint, verified against its manifest; null when the run has none.</summary>
    public CheckpointReader? Open()
    {
        var name = ReadPointer();
        if (name is null)
            return File.Exists(Path.Combine(Root, "state.json")) ? CheckpointReader.Legacy(Root) : null;
        var folder = Path.Combine(Root, name);
        if (!File.Exists(Path.Combine(folder, ManifestName)))
            throw new DmdException($"checkpoint {folder} named by {Path.Combine(Root, Pointer)} is missing or has no manifest; " +
                                   $"the run folder was changed by hand: delete {Root} to start the run afresh");
        return OpenFolder(folder);
    }

    /// <summary>The checkpoint in one step folder (<c>checkpoint/step-NNNNNNNN</c>), verified against its manifest.</summary>
    public static CheckpointReader OpenFolder(string folder)
    {
        var manifestPath = Path.Combine(folder, ManifestName);
        string root = Path.GetDirectoryName(folder.TrimEnd('/', '\\')) is { Length: > 0 } d ? d : ".";
        if (!File.Exists(manifestPath))
            throw new DmdException($"{folder} is not a complete checkpoint (no {ManifestName}): name a step folder the run finished writing, or its checkpoint folder for the latest");
        var manifest = Checkpoint.LoadJson<CheckpointManifest>(manifestPath);
        foreach (var f in manifest.Files)
        {
            var path = Path.Combine(folder, f.Name);
            string? problem = !File.Exists(path) ? "is missing"
                : new FileInfo(path).Length != f.Bytes ? $"has {new FileInfo(path).Length} bytes, the manifest says {f.Bytes}"
                : Sha256(path) != f.Sha256 ? "does not match its SHA-256 in the manifest" : null;
            if (problem is not null)
                throw new DmdException($"checkpoint {folder} is damaged: {f.Name} {problem}; restore it from a backup or delete {root} to start afresh");
        }
        return new CheckpointReader(folder, manifest.Step, manifest.Files.Select(f => f.Name).ToHashSet());
    }

    /// <summary>The name of the latest complete checkpoint's folder (<c>step-NNNNNNNN</c>), or null when there is none in the current layout.</summary>
    public string? ReadPointer()
    {
        var p = Path.Combine(Root, Pointer);
        if (!File.Exists(p)) return null;
        var name = File.ReadAllText(p).Trim();
        if (!name.StartsWith("step-") || name.Contains('/') || name.Contains('\\'))
            throw new DmdException($"{p} does not name a checkpoint ('{name}'); delete {Root} to start the run afresh");
        return name;
    }

    /// <summary>After a switch: removes the other step folders, unfinished ones and the files of the older layout.</summary>
    void RemoveAllBut(string keep)
    {
        foreach (var d in Directory.GetDirectories(Root, "step-*"))
            if (Path.GetFileName(d) != keep) Directory.Delete(d, recursive: true);
        foreach (var f in Directory.GetFiles(Root))
            if (Path.GetFileName(f) != Pointer) File.Delete(f);
    }

    internal static string Sha256(string path)
    {
        using var s = File.OpenRead(path);
        return Convert.ToHexStringLower(SHA256.HashData(s));
    }
}

/// <summary>What <c>manifest.json</c> of a checkpoint holds.</summary>
internal sealed record CheckpointManifest(int Step, List<CheckpointFile> Files);

/// <summary>One file of a checkpoint: name, size and SHA-256.</summary>
internal sealed record CheckpointFile(string Name, long Bytes, string Sha256);

/// <summary>Writes the files of one checkpoint into its unfinished folder.</summary>
public sealed class CheckpointWriter
{
    private readonly string folder;
    private readonly List<CheckpointFile> files = new();

    internal CheckpointWriter(string folder) => this.folder = folder;

    /// <summary>A module's parameters and buffers as safetensors.</summary>
    public void Module(string name, nn.Module module) => Add(name, p => module.save_safetensors(p));

    /// <summary>An optimiser's state (PyTorch state_dict pickle).</summary>
    public void Optimizer(string name, optim.Optimizer optimizer) => Add(name, p => ((OptimizerHelper)optimizer).save_py(p));

    /// <summary>A JSON document (positions, random generator states, small settings).</summary>
    public void Json<T>(string name, T value) => Add(name, p => File.WriteAllText(p, System.Text.Json.JsonSerializer.Serialize(value, Checkpoint.Json)));

    void Add(string name, Action<string> write)
    {
        var path = Path.Combine(folder, name);
        write(path);
        FileSync.File(path);
        files.Add(new CheckpointFile(name, new FileInfo(path).Length, CheckpointStore.Sha256(path)));
        CheckpointStore.AfterFileWritten?.Invoke(name);
    }

    internal void WriteManifest(int step)
    {
        var path = Path.Combine(folder, "manifest.json");
        File.WriteAllText(path, System.Text.Json.JsonSerializer.Serialize(new CheckpointManifest(step, files), Checkpoint.Json));
        FileSync.File(path);
        CheckpointStore.AfterFileWritten?.Invoke("manifest.json");
    }
}

/// <summary>Reads the files of one verified checkpoint back.</summary>
public sealed class CheckpointReader
{
    private readonly HashSet<string>? names; // null for the older layout (no manifest)

    /// <summary>The folder the files are read from.</summary>
    public string Folder { get; }
    /// <summary>The step the checkpoint was written at.</summary>
    public int Step { get; }

    internal CheckpointReader(string folder, int step, HashSet<string>? names) => (Folder, Step, this.names) = (folder, step, names);

    internal static CheckpointReader Legacy(string root)
    {
        var state = Checkpoint.LoadJson<TrainState>(Path.Combine(root, "state.json"));
        return new CheckpointReader(root, state.Step, null);
    }

    /// <summary>Whether the checkpoint holds this file.</summary>
    public bool Has(string name) => names?.Contains(name) ?? File.Exists(Path.Combine(Folder, name));

    /// <summary>Loads a module's weights from the named safetensors file (names and shapes must match exactly).</summary>
    public void Module(string name, nn.Module module) => Checkpoint.LoadModule(module, Require(name));

    /// <summary>Restores an optimiser's state from the named file.</summary>
    public void Optimizer(string name, optim.Optimizer optimizer) => ((OptimizerHelper)optimizer).load_py(Require(name));

    /// <summary>Reads the named JSON document. Each read throws a <see cref="DmdException"/> when the checkpoint lacks the file.</summary>
    public T Json<T>(string name) => Checkpoint.LoadJson<T>(Require(name));

    string Require(string name)
    {
        var path = Path.Combine(Folder, name);
        if (!Has(name) || !File.Exists(path))
            throw new DmdException($"checkpoint {Folder} lacks {name}: it was written by another kind of run; use another --out folder");
        return path;
    }
}

/// <summary>Flushes files and folders to the disk (fsync), so a rename that follows cannot outrun their contents.</summary>
internal static class FileSync
{
    public static void File(string path)
    {
        using var s = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        s.Flush(flushToDisk: true);
    }

    [DllImport("libc", EntryPoint = "open", SetLastError = true)] static extern int Open(string path, int flags);
    [DllImport("libc", EntryPoint = "fsync", SetLastError = true)] static extern int Fsync(int fd);
    [DllImport("libc", EntryPoint = "close")] static extern int Close(int fd);

    /// <summary>
    /// Writes a folder whole or not at all: through <paramref name="write"/> into <paramref name="staging"/> (an old
    /// staging folder and an old <paramref name="final"/> removed first), flushed, then renamed to <paramref name="final"/>.
    /// </summary>
    public static void WholeFolder(string staging, string final, Action<string> write)
    {
        foreach (var stale in new[] { staging, final }) if (System.IO.Directory.Exists(stale)) System.IO.Directory.Delete(stale, recursive: true);
        System.IO.Directory.CreateDirectory(staging);
        write(staging);
        Directory(staging);
        System.IO.Directory.Move(staging, final);
        Directory(Path.GetDirectoryName(Path.GetFullPath(final))!);
    }

    /// <summary>Makes renames and new entries of a folder durable (Linux; elsewhere a no-op).</summary>
    public static void Directory(string path)
    {
        if (!OperatingSystem.IsLinux()) return;
        int fd = Open(path, 0 /* O_RDONLY */);
        if (fd < 0) return;
        try { Fsync(fd); } finally { Close(fd); }
    }
}
