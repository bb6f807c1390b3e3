using System.Text.Json;
using System.Text.Json.Nodes;
using Dmd.IO;

namespace Dmd.Training;

/// <summary>What the shared run loop needs from a trainer: a step, and its state in and out of a checkpoint.</summary>
public interface IResumableTrainer
{
    /// <summary>Optimiser steps done so far.</summary>
    int Step { get; }

    /// <summary>One training step; returns the values to log (losses and the like).</summary>
    Dictionary<string, double> TrainStep();

    /// <summary>Everything a resumed run needs to continue bit for bit.</summary>
    void WriteCheckpoint(CheckpointWriter writer);

    /// <summary>Restores what <see cref="WriteCheckpoint"/> wrote, <see cref="Step"/> included.</summary>
    void ReadCheckpoint(CheckpointReader reader);

    /// <summary>Whether every trained weight is finite (checked before each checkpoint is written).</summary>
    bool WeightsFinite();
}

/// <summary>How a caller follows and steers a run.</summary>
public sealed record RunOptions
{
    /// <summary>After each step: (step, total steps, values).</summary>
    public Action<int, int, IReadOnlyDictionary<string, double>>? OnStep { get; init; }
    /// <summary>Status lines ("resuming from step N").</summary>
    public Action<string>? OnMessage { get; init; }
    /// <summary>Asked between steps; true stops the run cleanly (checkpoint written, run can be continued).</summary>
    public Func<bool>? Stop { get; init; }
    /// <summary>Stop after this step without finishing the run (checkpoint written).</summary>
    public int? StopAfter { get; init; }
    /// <summary>Continue a run in a folder even though its settings differ from the saved ones.</summary>
    public bool AllowChanges { get; init; }
    /// <summary>
    /// Stop cleanly once this much time has passed since the loop started (checkpoint written; the run continues when
    /// run again), but only after at least one step, so every call moves the run on. Null = no limit.
    /// </summary>
    public TimeSpan? TimeBudget { get; init; }
}

/// <summary>
/// The loop every trainer runs: resume from the latest checkpoint, step, log, checkpoint, stop cleanly on request,
/// and stop on a non-finite loss or weight without overwriting the last good checkpoint.
/// </summary>
public static class TrainingLoop
{
    /// <summary>The value a trainer reports (as 1) for a step whose update it skipped: a non-finite loss or gradient.</summary>
    public const string SkippedKey = "skipped";

    /// <summary>
    /// Consecutive skipped steps after which a run counts as diverged. A single non-finite step is skipped and logged
    /// (on this project's 2-core VM a forward pass of a U-Net very rarely returned NaN for finite inputs and weights);
    /// data or settings that make every step non-finite stop the run.
    /// </summary>
    public const int MaxSkippedInARow = 3;

    /// <summary>
    /// Refuses to continue a run whose saved settings (<c>config.json</c>) differ from <paramref name="now"/>, apart from
    /// the fields in <paramref name="mayChange"/> (paths like <c>Config.Steps</c>), unless the caller allows changes.
    /// Fields in <paramref name="pathFields"/> are file paths and compare as full paths. A field the saved file lacks (a
    /// setting added after the run was saved) counts as unchanged when its value is the one in <paramref name="defaults"/>; a
    /// field the settings no longer have beside fields they still have (another network kind's fields in a spec saved
    /// before each kind had its own record) is not compared.
    /// </summary>
    public static void CheckSameRun<T>(string outDir, T now, RunOptions options, string[] mayChange, string[] pathFields, T? defaults = default)
    {
        var configPath = Path.Combine(outDir, "config.json");
        if (!new CheckpointStore(outDir).Exists || !File.Exists(configPath) || options.AllowChanges) return;
        JsonNode? saved;
        try { saved = JsonNode.Parse(File.ReadAllText(configPath)); }
        catch (JsonException e) { throw new DmdInputException($"{configPath} is not valid JSON ({e.Message}); restore it or use another --out folder", e); }
        var before = Flatten(saved);
        var after = Flatten(JsonSerializer.SerializeToNode(now, Checkpoint.Json));
        var usual = defaults is null ? new() : Flatten(JsonSerializer.SerializeToNode(defaults, Checkpoint.Json));
        string Norm(string key, string? v) => v is not null && pathFields.Contains(key) ? Path.GetFullPath(v) : v ?? "none";
        bool Dropped(string key) => !after.ContainsKey(key) && key.LastIndexOf('.') is int dot and > 0 &&
                                     after.Keys.Any(k => k.StartsWith(key[..(dot + 1)], StringComparison.Ordinal));
        var diffs = before.Keys.Union(after.Keys)
            .Where(k => !mayChange.Contains(k) && !Dropped(k))
            .Where(k => before.ContainsKey(k) || !usual.TryGetValue(k, out var d) || d != after.GetValueOrDefault(k))
            .Where(k => Norm(k, before.GetValueOrDefault(k)) != Norm(k, after.GetValueOrDefault(k)))
            .Select(k => $"{k.Replace("Config.", "")} {before.GetValueOrDefault(k) ?? "none"} -> {after.GetValueOrDefault(k) ?? "none"}")
            .ToList();
        if (diffs.Count > 0)
            throw new DmdInputException($"{outDir} holds a run with other settings ({string.Join(", ", diffs.Take(6))}{(diffs.Count > 6 ? $", ... {diffs.Count} in all" : "")}): " +
                                        "use another --out folder, repeat the run's own settings, or pass --allow-changes to continue it with the new ones");
    }

    static Dictionary<string, string?> Flatten(JsonNode? node, string prefix = "", Dictionary<string, string?>? into = null)
    {
        into ??= new();
        switch (node)
        {
            case JsonObject o:
                foreach (var (k, v) in o) Flatten(v, prefix.Length == 0 ? k : prefix + "." + k, into);
                break;
            case JsonArray a:
                into[prefix] = a.ToJsonString();
                break;
            case JsonValue v when v.GetValueKind() == JsonValueKind.Number:
                // by value: 5e-05 (a hand-written or older file) and 5E-05 (this serializer) are the same setting
                into[prefix] = v.GetValue<double>().ToString("R", System.Globalization.CultureInfo.InvariantCulture);
                break;
            default:
                into[prefix] = node?.ToString();
                break;
        }
        return into;
    }

    /// <summary>
    /// The state of libtorch's global generator, saved with every checkpoint: the trainers draw from their own generators,
    /// but dropout layers draw from the global one, so without it a resumed run with dropout would not continue bit for bit.
    /// </summary>
    const string GlobalRngFile = "global_rng.json";

    /// <summary>Restores the latest checkpoint of <paramref name="outDir"/> if there is one; returns whether it did.</summary>
    public static bool Resume(IResumableTrainer trainer, string outDir, RunOptions options)
    {
        var reader = new CheckpointStore(outDir).Open();
        if (reader is null) { Mpi.Barrier(); return false; }
        trainer.ReadCheckpoint(reader);
        if (reader.Has(GlobalRngFile)) Checkpoint.RestoreGenerator(TorchSharp.torch.Generator.Default, reader.Json<string>(GlobalRngFile));
        options.OnMessage?.Invoke($"resuming from step {trainer.Step} ({reader.Folder})");
        Mpi.Barrier(); // every rank has read the run's files before rank 0 writes any
        return true;
    }

    /// <summary>
    /// Steps until <paramref name="steps"/> (or <see cref="RunOptions.StopAfter"/>, or a stop request), logging to
    /// losses.csv every <paramref name="logEvery"/> steps and at the last step made, and checkpointing every <paramref name="checkpointEvery"/>
    /// steps and at the end. <paramref name="afterStep"/> runs after each step (grids). Returns true when the run
    /// reached <paramref name="steps"/> or StopAfter, false when it was asked to stop.
    /// In a data-parallel run (<see cref="DataParallel"/>) every rank runs this loop; the logged values are the means over
    /// the ranks, a stop request on any rank stops all of them, and rank 0 alone writes the log and the checkpoints.
    /// </summary>
    public static bool Run(IResumableTrainer trainer, string outDir, bool resumed, int steps, int logEvery, int checkpointEvery,
                           RunOptions options, Action<int>? afterStep = null)
    {
        var logPath = Path.Combine(outDir, "losses.csv");
        bool root = DataParallel.IsRoot;
        if (resumed && root) CsvLog.TruncateAfter(logPath, trainer.Step);
        var log = root ? new CsvLog(logPath, append: resumed) : null;
        var store = new CheckpointStore(outDir);
        int lastSaved = resumed ? trainer.Step : -1, skippedInARow = 0;
        int end = Math.Min(steps, options.StopAfter ?? int.MaxValue);
        Dictionary<string, double>? unlogged = null; // the last step's values when its row is not written yet

        void Save()
        {
            if (lastSaved == trainer.Step) return;
            if (!trainer.WeightsFinite())
                throw Diverged("the weights are no longer finite", lastSaved);
            if (root) store.Save(trainer.Step, w =>
            {
                trainer.WriteCheckpoint(w);
                w.Json(GlobalRngFile, Checkpoint.GeneratorState(TorchSharp.torch.Generator.Default)); // dropout draws from it
            });
            lastSaved = trainer.Step;
        }

        var clock = System.Diagnostics.Stopwatch.StartNew();
        int firstStep = trainer.Step;
        bool OverBudget() => options.TimeBudget is TimeSpan budget && trainer.Step > firstStep && clock.Elapsed > budget;
        while (trainer.Step < end)
        {
            if (DataParallel.Any((options.Stop?.Invoke() ?? false) || OverBudget())) // every rank stops after the same step
            {
                if (unlogged is not null) log?.Write(trainer.Step, unlogged); // a stopped run's last step is in its log
                Save();
                return false;
            }
            var values = DataParallel.Mean(trainer.TrainStep());
            TrainingUtils.FreeFinalizableNatives(); // keeps RSS flat (see there)
            int step = trainer.Step;
            if (values.ContainsKey(SkippedKey))
            {
                var what = string.Join(", ", values.Where(kv => !double.IsFinite(kv.Value)).Select(kv => $"{kv.Key} = {kv.Value}").DefaultIfEmpty("a gradient not finite"));
                if (++skippedInARow >= MaxSkippedInARow)
                    throw Diverged($"{what} at step {step}, after {MaxSkippedInARow} non-finite steps in a row", lastSaved);
                options.OnMessage?.Invoke($"step {step}: {what}; its update was skipped");
            }
            else
            {
                skippedInARow = 0;
                foreach (var (k, v) in values)
                    if (!double.IsFinite(v)) throw Diverged($"{k} = {v} at step {step}", lastSaved);
            }
            var row = new Dictionary<string, double>(values) { ["rss_mb"] = TrainingUtils.RssMb() };
            if (step % logEvery == 0 || step == end) { log?.Write(step, row); unlogged = null; }
            else unlogged = row;
            options.OnStep?.Invoke(step, steps, values);
            afterStep?.Invoke(step);
            if (step % checkpointEvery == 0 || step == end) Save();
        }
        return true;
    }

    static TrainingDivergedException Diverged(string what, int lastSaved) => new(
        $"training diverged: {what}. Nothing was saved after it; " +
        (lastSaved >= 0 ? $"the last good checkpoint (step {lastSaved}) is kept. " : "no checkpoint had been written yet. ") +
        "Lower the learning rate or check the data, then run the same command again (with --allow-changes if you changed a setting).");
}
