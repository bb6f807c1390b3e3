using Dmd.Diffusion;
using Dmd.IO;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Distillation;

/// <summary>How the teacher produced a set of regression pairs (stored beside them). <paramref name="SigmaMax"/> is the
/// noise level the sampler starts at, z scaled by it (files written before it was recorded were made at 80);
/// <paramref name="SigmaMin"/> is the sampler's last noise level (EDM's 0.002; a VP teacher's smallest training sigma), and
/// <paramref name="Prompts"/> the number of prompts of a text-to-image teacher's pairs (0 for class labels), listed in prompts.txt.</summary>
public sealed record PairInfo(string Sampler, int Steps, int Nfe, double Guidance, long Seed, int Count, int ShardSize = 0,
                              double SigmaMax = KarrasSchedule.DefaultSigmaMax, double SigmaMin = KarrasSchedule.DefaultSigmaMin,
                              int Prompts = 0);

/// <summary>
/// The regression set of DMD: noise z_ref, labels y_ref (one-hot or none), and the teacher's deterministic
/// ODE output x_ref = Heun(z_ref, y_ref). Stored either as one safetensors file (z, x, y) with a JSON sidecar,
/// or as a folder of shards (<c>pairs.json</c> + <c>shard-NNNNN.safetensors</c>, one per batch) that a
/// stopped run resumes: noise and labels come from one seeded generator in batch order, so a resumed run
/// draws exactly the noise of the shards it skips and makes the same set as an uninterrupted one.
/// </summary>
public sealed class RegressionPairs
{
    /// <summary>Name of the <see cref="PairInfo"/> file in a shard folder.</summary>
    public const string InfoFile = "pairs.json";

    /// <summary>Noise z_ref, float32 (N, ...sample shape), standard normal (the sampler scales it by sigma_max).</summary>
    public Tensor Z { get; }
    /// <summary>The teacher's Heun output x_ref for each z_ref, shaped as <see cref="Z"/>.</summary>
    public Tensor X { get; }
    /// <summary>One-hot labels y_ref (N, classes), or null for an unconditional or a text-to-image teacher.</summary>
    public Tensor? Y { get; }
    /// <summary>A text-to-image teacher's prompt of each pair: indices (N, int64) into <see cref="Prompts"/>; null for class labels.</summary>
    public Tensor? PromptIndex { get; init; }
    /// <summary>The prompts <see cref="PromptIndex"/> points into (prompts.txt of the pairs), or null.</summary>
    public IReadOnlyList<string>? Prompts { get; init; }
    /// <summary>Name of the prompts file beside text-to-image pairs (one prompt a line).</summary>
    public const string PromptsFile = "prompts.txt";
    /// <summary>How the teacher made the pairs.</summary>
    public PairInfo Info { get; }
    /// <summary>Number of pairs N.</summary>
    public long Count => Z.shape[0];

    /// <summary>Wraps pairs already in memory; <paramref name="z"/> and <paramref name="x"/> must have the same shape.</summary>
    public RegressionPairs(Tensor z, Tensor x, Tensor? y, PairInfo info)
    {
        if (!z.shape.SequenceEqual(x.shape)) throw new ArgumentException("z and x must have the same shape");
        Z = z; X = x; Y = y; Info = info;
    }

    /// <summary>
    /// Runs the teacher's deterministic Heun sampler from fresh noise, in batches, with progress reported
    /// after each batch (done, total). With <paramref name="shardDir"/>, each batch is written as a shard
    /// as soon as it is done, and shards already there (from a stopped run with the same settings) are
    /// read instead of recomputed. A text-to-image teacher takes <paramref name="conditions"/> (its prompts): each pair's prompt
    /// is drawn uniformly, its index stored; the sampler's levels run from <paramref name="sigmaMax"/> to <paramref name="sigmaMin"/>.
    /// In an MPI job (<see cref="Mpi"/>) every rank draws the same noise, rank r computes (and writes) the shards
    /// r, r + N, r + 2N, ..., and the outputs are gathered, so the shards and the returned set are those of one process.
    /// </summary>
    public static RegressionPairs Generate(IDenoiser teacher, int[] shape, int count, int steps = 18, double guidance = 1.0,
                                           long seed = 1, int batchSize = 1024, Action<int, int>? onBatch = null, Device? device = null,
                                           string? shardDir = null, double sigmaMax = KarrasSchedule.DefaultSigmaMax,
                                           PromptConditions? conditions = null, double sigmaMin = KarrasSchedule.DefaultSigmaMin)
    {
        if (count < 1 || batchSize < 1) throw new DmdInputException($"pair count ({count}) and batch size ({batchSize}) must be positive");
        Settings.AtLeast("steps", steps, 1);
        Settings.AtLeast("guidance", guidance, 0);
        Settings.AtLeast("sigma-max", sigmaMax, KarrasSchedule.DefaultSigmaMin);
        using var g = new Generator((ulong)seed);
        var net = conditions?.Guided(teacher, guidance) ?? GuidedDenoiser.Wrap(teacher, guidance);
        var info = new PairInfo("heun", steps, 2 * steps - 1, guidance, seed, count, shardDir is null ? 0 : batchSize, sigmaMax, sigmaMin,
                                conditions?.Prompts.Count ?? 0);
        if (shardDir is not null) PrepareShardDir(shardDir, info, allRanks: true, conditions?.Prompts);
        var zs = new List<Tensor>(); var xs = new List<Tensor>(); var ys = new List<Tensor>(); var ps = new List<Tensor>();
        for (int done = 0, shard = 0; done < count; shard++)
        {
            int b = Math.Min(batchSize, count - done);
            var z = Rng.Normal(new long[] { b }.Concat(shape.Select(s => (long)s)).ToArray(), g);
            var p = conditions?.DrawIndices(b, g);
            var y = p is null ? Rng.OneHotLabels(teacher.LabelDim, b, g) : null;
            var shardPath = shardDir is null ? null : ShardPath(shardDir, shard);
            Tensor x;
            if (shard % Mpi.Size != Mpi.Rank) x = zeros_like(z); // another rank's shard: its values arrive with the gather below
            else if (shardPath is not null && File.Exists(shardPath))
            {
                var saved = Checkpoint.LoadTensors(shardPath, "z", "x");
                if (!saved["z"].shape.SequenceEqual(z.shape) || !saved["z"].eq(z).all().item<bool>())
                    throw new DmdInputException($"{shardPath} does not hold the noise this run draws; delete {shardDir} and make the pairs again");
                x = saved["x"];
            }
            else
            {
                var (zd, yd) = (z.to(device ?? CPU), p is null ? y?.to(device ?? CPU) : conditions!.Of(p, device));
                using (var scope = NewDisposeScope())
                    x = Samplers.Heun(net, zd, yd, steps, sigmaMin: sigmaMin, sigmaMax: sigmaMax).Samples.cpu().MoveToOuterDisposeScope();
                if (shardPath is not null) SaveTensors(shardPath, z, x, y, p);
            }
            zs.Add(z); xs.Add(x); if (y is not null) ys.Add(y); if (p is not null) ps.Add(p);
            done += b;
            onBatch?.Invoke(done, count);
        }
        var all = cat(xs.ToArray());
        if (Mpi.Size > 1) all = Mpi.AllreduceSum(all); // each value is one rank's, the others add zeros: exact
        return new RegressionPairs(cat(zs.ToArray()), all, ys.Count > 0 ? cat(ys.ToArray()) : null, info)
        {
            PromptIndex = ps.Count > 0 ? cat(ps.ToArray()) : null,
            Prompts = conditions?.Prompts,
        };
    }

    static string ShardPath(string dir, int shard) => Path.Combine(dir, $"shard-{shard:D5}.safetensors");

    static void PrepareShardDir(string dir, PairInfo info, bool allRanks = false, IReadOnlyList<string>? prompts = null)
    {
        Directory.CreateDirectory(dir);
        var infoPath = Path.Combine(dir, InfoFile);
        bool exists = File.Exists(infoPath);
        if (exists)
        {
            var old = Checkpoint.LoadJson<PairInfo>(infoPath);
            if (old != info)
                throw new DmdInputException($"{dir} holds pairs made with other settings ({old}); use another --out folder or delete it");
        }
        if (allRanks) Mpi.Barrier(); // in an MPI job: every rank has read it before rank 0 writes it
        if (prompts is not null && exists && !ReadPrompts(Path.Combine(dir, PromptsFile)).SequenceEqual(prompts))
            throw new DmdInputException($"{dir} holds pairs made for other prompts; use another --out folder or delete it");
        if (!exists && (!allRanks || Mpi.IsRoot))
        {
            if (prompts is not null) WritePrompts(Path.Combine(dir, PromptsFile), prompts);
            Checkpoint.SaveJson(info, infoPath);
        }
    }

    static void WritePrompts(string path, IReadOnlyList<string> prompts)
    {
        File.WriteAllLines(path + ".tmp", prompts);
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>The prompts of a prompts file: one per line, in order (lines kept as they are; a missing file is an error).</summary>
    public static string[] ReadPrompts(string path)
    {
        if (!File.Exists(path)) throw new DmdInputException($"prompts file not found: {path} (one prompt a line)");
        var lines = File.ReadAllLines(path);
        int n = lines.Length;
        while (n > 0 && lines[n - 1].Length == 0) n--; // a trailing newline is not an empty prompt
        return lines[..n];
    }

    static void SaveTensors(string path, Tensor z, Tensor x, Tensor? y, Tensor? p = null)
    {
        var d = new Dictionary<string, Tensor> { ["z"] = z.contiguous(), ["x"] = x.contiguous() };
        if (y is not null) d["y"] = y.contiguous();
        if (p is not null) d["p"] = p.contiguous();
        Checkpoint.SaveTensors(d, path); // written to .tmp and renamed: a shard is either whole or absent
    }

    /// <summary>Saves as one file (path ends in .safetensors) or as a shard folder (any other path).</summary>
    public void Save(string path)
    {
        if (!path.EndsWith(".safetensors", StringComparison.OrdinalIgnoreCase))
        {
            var info = Info with { ShardSize = (int)Count };
            PrepareShardDir(path, info, prompts: Prompts);
            SaveTensors(ShardPath(path, 0), Z, X, Y, PromptIndex);
            return;
        }
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        SaveTensors(path, Z, X, Y, PromptIndex);
        if (Prompts is not null) WritePrompts(Path.ChangeExtension(path, ".prompts.txt"), Prompts);
        Checkpoint.SaveJson(Info, Path.ChangeExtension(path, ".json"));
    }

    /// <summary>Loads a pairs file or a complete shard folder.</summary>
    public static RegressionPairs Load(string path)
    {
        if (Directory.Exists(path)) return LoadShards(path);
        if (!File.Exists(path)) throw new DmdInputException($"regression pairs not found: {path} (make them with `dmd pairs`)");
        var d = Checkpoint.LoadTensors(path, "z", "x");
        var info = Checkpoint.LoadJson<PairInfo>(Path.ChangeExtension(path, ".json"));
        return new RegressionPairs(d["z"], d["x"], d.GetValueOrDefault("y"), info)
        {
            PromptIndex = d.GetValueOrDefault("p"),
            Prompts = info.Prompts > 0 ? ReadPrompts(Path.ChangeExtension(path, ".prompts.txt")) : null,
        };
    }

    static RegressionPairs LoadShards(string dir)
    {
        var infoPath = Path.Combine(dir, InfoFile);
        if (!File.Exists(infoPath)) throw new DmdInputException($"{dir} has no {InfoFile}: it is not a pairs folder made by `dmd pairs`");
        var info = Checkpoint.LoadJson<PairInfo>(infoPath);
        int shards = (info.Count + info.ShardSize - 1) / Math.Max(1, info.ShardSize);
        var parts = new List<Dictionary<string, Tensor>>();
        for (int s = 0; s < shards; s++)
        {
            var p = ShardPath(dir, s);
            if (!File.Exists(p))
                throw new DmdInputException($"{dir} is incomplete ({s} of {shards} shards): run the same `dmd pairs` command again to finish it");
            parts.Add(Checkpoint.LoadTensors(p, "z", "x"));
        }
        Tensor? y = parts[0].ContainsKey("y") ? cat(parts.Select(d => d["y"]).ToArray()) : null;
        Tensor? index = parts[0].ContainsKey("p") ? cat(parts.Select(d => d["p"]).ToArray()) : null;
        return new RegressionPairs(cat(parts.Select(d => d["z"]).ToArray()), cat(parts.Select(d => d["x"]).ToArray()), y, info)
        {
            PromptIndex = index,
            Prompts = info.Prompts > 0 ? ReadPrompts(Path.Combine(dir, PromptsFile)) : null,
        };
    }
}
