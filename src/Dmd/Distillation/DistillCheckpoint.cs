using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;

namespace Dmd.Distillation;

/// <summary>
/// A `dmd distill` run's checkpoint read as the generator the run would write if it stopped there: the moving average of
/// the generator's weights when the run keeps one (what its generator.safetensors holds at the end), else the weights
/// themselves, on the noise levels of the run's config.json (a K-step generator's K levels included). So `eval`,
/// `sample`, `bench` and <see cref="OneStepGenerator.Load"/> take, while a run is going or after it was stopped,
/// <c>RUN/checkpoint</c> (the latest checkpoint), <c>RUN/checkpoint/step-NNNNNNNN</c> (that one) or a run folder that
/// has no generator.safetensors yet (its latest). Every file is checked against the checkpoint's manifest first.
/// </summary>
/// <param name="RunDir">The run folder (holding config.json and checkpoint/).</param>
/// <param name="StepFolder">The step folder named, or null for the latest.</param>
/// <param name="Info">The run's config.json.</param>
internal sealed record DistillCheckpoint(string RunDir, string? StepFolder, DmdRunInfo Info)
{
    /// <summary>
    /// What <paramref name="path"/> names if it is a distillation run's checkpoint (see the class), from the folder names
    /// and the run's config.json alone (nothing is verified or loaded); null for anything else.
    /// </summary>
    public static DistillCheckpoint? Locate(string path)
    {
        if (!Directory.Exists(path)) return null;
        var full = Path.GetFullPath(path).TrimEnd('/', '\\');
        var name = Path.GetFileName(full);
        var parent = Path.GetDirectoryName(full);
        string? runDir, stepFolder = null;
        if (name == "checkpoint") runDir = parent;
        else if (name.StartsWith("step-", StringComparison.Ordinal) && parent is not null && Path.GetFileName(parent) == "checkpoint")
            (runDir, stepFolder) = (Path.GetDirectoryName(parent), path);
        else if (!File.Exists(Path.Combine(full, OneStepGenerator.FileName)) && new CheckpointStore(full).Exists) runDir = path;
        else return null;
        return runDir is not null && ReadInfo(runDir) is { } info ? new DistillCheckpoint(runDir, stepFolder, info) : null;
    }

    /// <summary>
    /// The generator file an export into <paramref name="outDir"/> writes. Refuses a folder that already holds a
    /// generator, a `dmd distill` run's folder (the export would replace its config.json) and any folder inside a run's
    /// checkpoint/ or kept/ (the run replaces and removes those): checked on the folders themselves, whichever run
    /// they belong to, so a path through a link or in other case is caught too.
    /// </summary>
    internal static string ExportTarget(string outDir)
    {
        var target = Path.Combine(outDir, OneStepGenerator.FileName);
        if (File.Exists(target))
            throw new DmdInputException($"{outDir} already holds a generator ({target}): choose another --out, or delete it to replace it");
        var full = Path.GetFullPath(outDir).TrimEnd('/', '\\');
        if (IsRun(full))
            throw new DmdInputException($"--out {outDir} is a `dmd distill` run's folder, whose config.json the export would replace: choose another folder");
        for (var dir = full; Path.GetDirectoryName(dir) is { } parent; dir = parent)
        {
            var name = Path.GetFileName(dir);
            if ((name.Equals("checkpoint", StringComparison.OrdinalIgnoreCase) || name.Equals("kept", StringComparison.OrdinalIgnoreCase)) && IsRun(parent))
                throw new DmdInputException($"--out {outDir} is inside the run {parent}'s {name}/ folder, which the run manages: choose a folder outside it");
        }
        return target;
    }

    /// <summary>Whether <paramref name="dir"/> is a `dmd distill` run's folder: it holds a checkpoint or the run's config.json.</summary>
    static bool IsRun(string dir)
    {
        if (new CheckpointStore(dir).Exists) return true;
        try { return ReadInfo(dir) is not null; }
        catch (Exception e) when (e is System.Text.Json.JsonException or DmdInputException) { return false; } // another file named config.json
    }

    /// <summary>The run's config.json when it is a distillation run's (it names a teacher); null for other runs.</summary>
    static DmdRunInfo? ReadInfo(string runDir)
    {
        var configPath = Path.Combine(runDir, "config.json");
        if (!File.Exists(configPath)) return null;
        var node = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(configPath));
        if (node?["Teacher"] is null || node["Spec"] is null || node["Config"] is null) return null;
        return Checkpoint.LoadJson<DmdRunInfo>(configPath);
    }

    /// <summary>The step of the checkpoint this names, without verifying it (the latest's from the pointer); null when unknown.</summary>
    public int? Step
    {
        get
        {
            var folder = StepFolder is not null ? Path.GetFileName(StepFolder.TrimEnd('/', '\\')) : new CheckpointStore(RunDir).ReadPointer();
            return folder is not null && int.TryParse(folder.AsSpan("step-".Length), out int s) ? s : null;
        }
    }

    /// <summary>A name for result files: the run folder's name and the step, e.g. <c>dmd2-4step-step400</c>.</summary>
    public string DisplayName => Path.GetFileName(Path.GetFullPath(RunDir).TrimEnd('/', '\\')) + (Step is int s ? $"-step{s}" : "-checkpoint");

    /// <summary>
    /// Loads the generator (frozen, on the CPU), after checking every file of the checkpoint against its manifest. The
    /// latest checkpoint of a run that is still going may be replaced while it is read: then the new latest is read.
    /// </summary>
    public OneStepGenerator Load() => LoadAt().Generator;

    /// <summary>As <see cref="Load"/>, with the step of the checkpoint that was read.</summary>
    public (OneStepGenerator Generator, int Step) LoadAt()
    {
        for (int attempt = 0; ; attempt++)
        {
            var store = new CheckpointStore(RunDir);
            var pointer = StepFolder is null ? store.ReadPointer() : null;
            try
            {
                var reader = StepFolder is not null ? CheckpointStore.OpenFolder(StepFolder)
                    : store.Open() ?? throw new DmdInputException($"{store.Root} holds no checkpoint yet: wait for the run's first one (--checkpoint-every)");
                var net = OneStepGenerator.BuildNet(Info.Spec, Info.Config.StepNetworkCount);
                reader.Module(reader.Has("ema.safetensors") ? "ema.safetensors" : OneStepGenerator.FileName, net);
                net.eval();
                TrainingUtils.Freeze(net);
                return (new OneStepGenerator(net, Info.Config.GeneratorSigmas(Info.Spec.SigmaData), Info.Config.StepNoiseCarry) { Spec = Info.Spec }, reader.Step);
            }
            catch (Exception e) when (e is DmdException or IOException && StepFolder is null && attempt < 3 && store.ReadPointer() != pointer)
            {
                // the run wrote a newer checkpoint and removed this one meanwhile: read the newer one
            }
        }
    }

    /// <summary>
    /// Writes the generator this checkpoint holds as a model folder, as the run itself writes one when it stops
    /// (generator.safetensors and .json, with a K-step generator's levels; config.json: the run's, its Steps set to the
    /// checkpoint's step), so a good step can be kept before the run moves on. Refuses a folder that already holds a
    /// generator, a run's folder and any folder inside a run's checkpoint/ or kept/ (<see cref="ExportTarget"/>). Returns the step written.
    /// </summary>
    public int Export(string outDir)
    {
        var target = ExportTarget(outDir);
        var (generator, step) = LoadAt();
        Directory.CreateDirectory(outDir);
        Checkpoint.SaveJson(Info.AtStep(step), Path.Combine(outDir, "config.json"));
        DmdTrainer.SaveGenerator(generator, Info.Spec, target); // as the run writes it: a text-to-image one-step generator's unet/ too
        return step;
    }
}
