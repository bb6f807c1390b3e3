using System.Text.Json.Nodes;
using Dmd.Data;
using Dmd.Distillation;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;

namespace Dmd.Tests;

/// <summary>
/// One spec record per network kind: a new file holds only its kind's fields, and every file written while one record
/// held every kind's fields (the shipped models, run folders' config.json, hand-written ones) still loads to the same network.
/// </summary>
public class NetworkSpecTests
{
    static readonly MlpSpec Mlp = new() { Shape = new[] { 2 }, LabelDim = 3, SigmaData = 0.7, Width = 32, Depth = 2 };
    static readonly DdpmppSpec Ddpmpp = new()
    {
        Shape = new[] { 1, 32, 32 }, LabelDim = 10, SigmaData = 0.5, ModelChannels = 16, ChannelMult = new[] { 1, 2, 2 }, NumBlocks = 2,
        AttnResolutions = new[] { 8 }, Dropout = 0.1,
    };
    static readonly AdmSpec Adm = new()
    {
        Shape = new[] { 3, 16, 16 }, LabelDim = 4, SigmaData = 0.6, ModelChannels = 8, ChannelMult = new[] { 1, 2 }, NumBlocks = 1,
        AttnResolutions = new[] { 8 }, Dropout = 0.13, AugmentDim = 9, ChannelsPerHead = 32,
    };

    public static TheoryData<string> Kinds => new() { "mlp", "ddpmpp", "adm" };

    static NetworkSpec Of(string kind) => kind switch { "mlp" => Mlp, "ddpmpp" => Ddpmpp, _ => Adm };

    /// <summary>The JSON an earlier version wrote: every kind's fields, the unused ones at their defaults.</summary>
    static string OldJson(string kind) => kind switch
    {
        "mlp" => """
            { "Kind": "mlp", "Shape": [2], "LabelDim": 3, "SigmaData": 0.7, "Width": 32, "Depth": 2, "ModelChannels": 128,
              "ChannelMult": null, "NumBlocks": 4, "AttnResolutions": null, "Dropout": 0.1, "AugmentDim": 0, "ChannelsPerHead": 64 }
            """,
        "ddpmpp" => """
            { "Kind": "ddpmpp", "Shape": [1, 32, 32], "LabelDim": 10, "SigmaData": 0.5, "Width": 256, "Depth": 4, "ModelChannels": 16,
              "ChannelMult": [1, 2, 2], "NumBlocks": 2, "AttnResolutions": [8], "Dropout": 0.1, "AugmentDim": 0, "ChannelsPerHead": 64 }
            """,
        _ => """
            { "Kind": "adm", "Shape": [3, 16, 16], "LabelDim": 4, "SigmaData": 0.6, "Width": 256, "Depth": 4, "ModelChannels": 8,
              "ChannelMult": [1, 2], "NumBlocks": 1, "AttnResolutions": [8], "Dropout": 0.13, "AugmentDim": 9, "ChannelsPerHead": 32 }
            """,
    };

    static NetworkSpec Read(string json)
    {
        var path = Path.Combine(TestUtil.TempDir(), "spec.json");
        File.WriteAllText(path, json);
        return Checkpoint.LoadJson<NetworkSpec>(path);
    }

    static string[] Keys(NetworkSpec spec) =>
        System.Text.Json.JsonSerializer.SerializeToNode(spec, Checkpoint.Json)!.AsObject().Select(kv => kv.Key).ToArray();

    [Theory]
    [MemberData(nameof(Kinds))]
    public void EachKindWritesOnlyItsOwnFieldsKindFirstAndReadsBackEqual(string kind)
    {
        var spec = Of(kind);
        var keys = Keys(spec);
        var shared = new[] { "Kind", "Shape", "LabelDim", "SigmaData" };
        var unet = new[] { "ModelChannels", "ChannelMult", "NumBlocks", "AttnResolutions", "Dropout", "AugmentDim" };
        var expected = kind switch
        {
            "mlp" => shared.Concat(new[] { "Width", "Depth" }),
            "ddpmpp" => shared.Concat(unet),
            _ => shared.Concat(unet).Append("ChannelsPerHead"),
        };
        Assert.Equal(expected.Order(), keys.Order());
        Assert.Equal("Kind", keys[0]);

        var back = Read(System.Text.Json.JsonSerializer.Serialize<NetworkSpec>(spec, Checkpoint.Json));
        Assert.Equal(spec, back);
        Assert.Equal(spec.GetType(), back.GetType());
        Assert.Equal(spec.GetHashCode(), back.GetHashCode());
        // a record typed as its kind writes its Kind too, so any file of it can be read as a NetworkSpec
        Assert.Equal(spec, Read(System.Text.Json.JsonSerializer.Serialize(spec, spec.GetType(), Checkpoint.Json)));
    }

    [Theory]
    [MemberData(nameof(Kinds))]
    public void SpecFilesWithEveryKindsFieldsLoadToTheSameNetwork(string kind)
    {
        var old = Read(OldJson(kind));
        Assert.Equal(Of(kind), old);
        var a = old.Build().state_dict();
        var b = Of(kind).Build().state_dict();
        Assert.Equal(b.Keys, a.Keys);
        foreach (var k in a.Keys) Assert.Equal(b[k].shape, a[k].shape);
        Assert.Equal(Keys(Of(kind)).Order(), Keys(old).Order()); // written back with its own fields only
    }

    [Fact]
    public void TheShippedModelsAndTheirRunsSpecsLoadAsDdpmpp()
    {
        var models = Path.Combine(TestUtil.RepoRoot, "models");
        var teacher = Checkpoint.LoadJson<NetworkSpec>(Path.Combine(models, "fashion-mnist-teacher", "teacher.json"));
        var student = Checkpoint.LoadJson<NetworkSpec>(Path.Combine(models, "fashion-mnist-student", "generator.json"));
        Assert.Equal(Ddpmpp, teacher);
        Assert.Equal(Ddpmpp with { Dropout = 0 }, student);
        Assert.Equal(teacher.WithoutDropout(), student);
        Assert.Equal(teacher, Checkpoint.LoadJson<TeacherRunInfo>(Path.Combine(models, "fashion-mnist-teacher", "config.json")).Spec);
        Assert.Equal(student, Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(models, "fashion-mnist-student", "config.json")).Spec);
        var student4 = Checkpoint.LoadJson<NetworkSpec>(Path.Combine(models, "fashion-mnist-student-4step", "generator.json"));
        Assert.Equal(student, student4);
        Assert.Equal(student4, Checkpoint.LoadJson<DmdRunInfo>(Path.Combine(models, "fashion-mnist-student-4step", "config.json")).Spec);
    }

    [Fact]
    public void KindMayStandAnywhereAndDefaultsToMlp()
    {
        Assert.Equal(Mlp, Read("""{ "Shape": [2], "LabelDim": 3, "SigmaData": 0.7, "Width": 32, "Depth": 2 }"""));
        Assert.Equal(Ddpmpp, Read("""{ "Shape": [1, 32, 32], "LabelDim": 10, "ModelChannels": 16, "ChannelMult": [1, 2, 2], "NumBlocks": 2, "AttnResolutions": [8], "Kind": "ddpmpp" }"""));
        Assert.Equal(Adm with { ChannelsPerHead = 64 }, Read(OldJson("adm").Replace(", \"ChannelsPerHead\": 32", ""))); // EDM's 64 when absent
        Assert.Contains("twice", Assert.Throws<DmdInputException>(() => Read("""{ "Kind": "mlp", "Width": 1, "Width": 2 }""")).Message);
    }

    [Fact]
    public void EqualityComparesArraysByValueAndKindsApart()
    {
        Assert.Equal(Ddpmpp, Ddpmpp with { ChannelMult = new[] { 1, 2, 2 }, Shape = new[] { 1, 32, 32 } });
        Assert.NotEqual(Ddpmpp, Ddpmpp with { AttnResolutions = new[] { 16 } });
        Assert.NotEqual(Ddpmpp, Ddpmpp with { Shape = new[] { 3, 32, 32 } });
        var admTwin = new AdmSpec
        {
            Shape = Ddpmpp.Shape, LabelDim = Ddpmpp.LabelDim, SigmaData = Ddpmpp.SigmaData, ModelChannels = Ddpmpp.ModelChannels,
            ChannelMult = Ddpmpp.ChannelMult, NumBlocks = Ddpmpp.NumBlocks, AttnResolutions = Ddpmpp.AttnResolutions, Dropout = Ddpmpp.Dropout,
        };
        Assert.NotEqual<NetworkSpec>(Ddpmpp, admTwin); // the same fields, another network
        Assert.NotEqual(Adm, Adm with { ChannelsPerHead = 64 });
        Assert.NotEqual(Mlp, Mlp with { Width = 33 });
    }

    /// <summary>
    /// A run folder whose config.json carries every kind's fields (written by an earlier version) continues with the same
    /// settings without --allow-changes; a changed field of the kind is still refused.
    /// </summary>
    [Fact]
    public void ARunSavedWithEveryKindsFieldsResumesAndAChangedFieldIsStillRefused()
    {
        var points = PointDistributions.Sample("ring8", 256, seed: 1).WithoutLabels();
        var spec = new MlpSpec { Shape = new[] { 2 }, SigmaData = 0.7, Width = 16, Depth = 1 };
        var cfg = new TeacherConfig { Steps = 2, BatchSize = 16, CheckpointEvery = 1, LogEvery = 1 };
        var dir = TestUtil.TempDir();
        using (var a = new TeacherTrainer(spec, cfg, points)) Assert.True(a.Run(dir, "ring8"));

        var configPath = Path.Combine(dir, "config.json");
        var node = JsonNode.Parse(File.ReadAllText(configPath))!.AsObject();
        node["Spec"] = JsonNode.Parse(OldJson("mlp").Replace("[2], \"LabelDim\": 3", "[2], \"LabelDim\": 0").Replace("\"Width\": 32, \"Depth\": 2", "\"Width\": 16, \"Depth\": 1"));
        File.WriteAllText(configPath, node.ToJsonString());

        using (var b = new TeacherTrainer(spec, cfg with { Steps = 3 }, points)) Assert.True(b.Run(dir, "ring8"));
        Assert.Equal(3, TestUtil.CheckpointStep(dir));

        using var c = new TeacherTrainer(spec with { Width = 24 }, cfg with { Steps = 4 }, points);
        var e = Assert.Throws<DmdInputException>(() => c.Run(dir, "ring8"));
        Assert.Contains("Spec.Width 16 -> 24", e.Message);
        Assert.Contains("--allow-changes", e.Message);
    }
}
