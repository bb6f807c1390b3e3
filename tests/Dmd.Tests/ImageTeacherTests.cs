using Dmd.Data;
using Dmd.Diffusion;
using Dmd.IO;
using Dmd.Networks;
using Dmd.Training;
using SkiaSharp;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// A tiny U-Net teacher trained once on synthetic images (no dataset needed): 16x16 greyscale bars, class 0
/// horizontal, class 1 vertical, at random positions and brightness.
/// </summary>
public sealed class TinyImageTeacher
{
    public const int Resolution = 16;
    public UNetSpec Spec { get; }
    public TeacherTrainer Trainer { get; }
    public string Dir { get; }

    public TinyImageTeacher()
    {
        Dir = TestUtil.TempDir();
        Spec = new UNetOptions { ModelChannels = 8, NumBlocks = 1, Dropout = 0 }.For(channels: 1, resolution: Resolution, labelDim: 2);
        var cfg = new TeacherConfig
        {
            Steps = 300, BatchSize = 16, LearningRate = 2e-3, LrRampupSteps = 20, EmaHalfLifeSteps = 30,
            LabelDropout = 0.1, CheckpointEvery = 1000, LogEvery = 5,
        };
        Trainer = new TeacherTrainer(Spec, cfg, Bars(256, seed: 1));
        Trainer.Run(Dir, "synthetic bars");
    }

    /// <summary>n images: a bright bar (class 0 horizontal, class 1 vertical), 2-4 pixels thick, on black.</summary>
    public static ImageDataset Bars(int n, int seed, int res = Resolution)
    {
        var rng = new Random(seed);
        var px = new byte[n * res * res];
        var labels = new long[n];
        for (int i = 0; i < n; i++)
        {
            int cls = i % 2, at = rng.Next(2, res - 5), thick = rng.Next(2, 5);
            byte v = (byte)rng.Next(160, 256);
            labels[i] = cls;
            for (int a = at; a < at + thick; a++)
                for (int b = 1; b < res - 1; b++)
                    px[i * res * res + (cls == 0 ? a * res + b : b * res + a)] = v;
        }
        return new ImageDataset(tensor(px).reshape(n, 1, res, res), tensor(labels), 2, new[] { "horizontal", "vertical" });
    }
}

public class ImageTeacherTests : IClassFixture<TinyImageTeacher>
{
    readonly TinyImageTeacher tiny;
    readonly ITestOutputHelper log;
    public ImageTeacherTests(TinyImageTeacher tiny, ITestOutputHelper log) { this.tiny = tiny; this.log = log; }

    [Fact]
    public void TinyUNetTeacherLowersItsEdmLoss()
    {
        var losses = CsvLog.Read(Path.Combine(tiny.Dir, "losses.csv"))["loss"].Select(p => p.Value).ToList();
        Assert.Equal(60, losses.Count);
        double first = losses.Take(20).Average(), last = losses.TakeLast(20).Average();
        log.WriteLine($"EDM loss: first 20 logged {first:F3}, last 20 {last:F3}");
        Assert.True(last < 0.8 * first, $"loss did not fall: first 20 logged {first:F3}, last 20 {last:F3}");
        Assert.True(File.Exists(Path.Combine(tiny.Dir, "teacher.safetensors")));
        var saved = Checkpoint.LoadJson<NetworkSpec>(Path.Combine(tiny.Dir, "teacher.json"));
        Assert.Equal(tiny.Spec, saved);
    }

    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("adm")]
    public void UNetSpecsRoundTripThroughJsonAndRebuildTheSameNetwork(string kind)
    {
        var spec = new UNetOptions { Arch = kind, ModelChannels = 16, NumBlocks = 1 }.For(channels: 3, resolution: 16, labelDim: 4);
        var path = Path.Combine(TestUtil.TempDir(), "spec.json");
        Checkpoint.SaveJson(spec, path);
        var back = Assert.IsAssignableFrom<UNetSpec>(Checkpoint.LoadJson<NetworkSpec>(path));
        Assert.Equal(spec, back);
        Assert.Equal(new[] { 1, 2, 2 }, back.ChannelMult);
        Assert.Equal(new[] { 4 }, back.AttnResolutions);

        var a = spec.Build().state_dict();
        var b = back.Build().state_dict();
        Assert.Equal(a.Keys, b.Keys);
        foreach (var k in a.Keys) Assert.Equal(a[k].shape, b[k].shape);
        Assert.Contains(kind == "adm" ? "model.out_conv.weight" : "model.dec.16x16_aux_conv.weight", a.Keys);
        Assert.Contains("model.map_label.weight", a.Keys);

        // a different field gives a different spec (arrays compared by value, not by reference)
        Assert.NotEqual(spec, back with { ChannelMult = new[] { 1, 2 } });
        Assert.Equal(spec, back with { ChannelMult = new[] { 1, 2, 2 } });
    }

    [Fact]
    public void FashionMnistSpecIsTheSmallDdpmppPreset()
    {
        var spec = new UNetOptions().FashionMnistTeacher();
        Assert.Equal(new[] { 1, 32, 32 }, spec.SampleShape);
        Assert.Equal(10, spec.LabelDim);
        var fromSpec = spec.BuildBackbone().state_dict();
        var preset = EdmUNetPresets.SmallDdpmpp().state_dict();
        Assert.Equal(preset.Keys.Order(), fromSpec.Keys.Order());
        foreach (var k in preset.Keys) Assert.Equal(preset[k].shape, fromSpec[k].shape);
    }

    [Fact]
    public void OldMlpSpecJsonStillLoads()
    {
        var path = Path.Combine(TestUtil.TempDir(), "old.json");
        File.WriteAllText(path, """{ "Kind": "mlp", "Shape": [2], "LabelDim": 3, "SigmaData": 0.7, "Width": 32, "Depth": 2 }""");
        var spec = Checkpoint.LoadJson<NetworkSpec>(path);
        Assert.Equal(new MlpSpec { Shape = new[] { 2 }, LabelDim = 3, SigmaData = 0.7, Width = 32, Depth = 2 }, spec);
        Assert.False(spec.IsImage);
        Assert.IsType<MlpBackbone>(spec.Build().Backbone);
    }

    [Fact]
    public void BadImageSpecsAreRejectedWithTheFix()
    {
        var e = Assert.Throws<DmdInputException>(() => new DdpmppSpec { Shape = new[] { 1, 16, 12 } }.Build());
        Assert.Contains("square images", e.Message);
        e = Assert.Throws<DmdInputException>(() => (new UNetOptions { Arch = "adm" }.For(channels: 1, resolution: 12, labelDim: 0) with { ChannelMult = new[] { 1, 2, 2, 2 } }).Build());
        Assert.Contains("cannot be halved", e.Message);
        var path = Path.Combine(TestUtil.TempDir(), "unet.json");
        File.WriteAllText(path, """{ "Kind": "unet", "Shape": [1, 16, 16] }""");
        e = Assert.Throws<DmdInputException>(() => Checkpoint.LoadJson<NetworkSpec>(path));
        Assert.Contains("use mlp, ddpmpp, adm or sd-unet", e.Message);
        e = Assert.Throws<DmdInputException>(() => new UNetOptions { Arch = "unet" }.For(channels: 1, resolution: 16, labelDim: 0));
        Assert.Contains("use ddpmpp or adm", e.Message);
    }

    [Fact]
    public void ClassGridHasOneRowPerClassAndTheExpectedPixelSize()
    {
        var path = Path.Combine(TestUtil.TempDir(), "grid.png");
        var (nfe, rate) = ClassGrid.Save(path, tiny.Trainer.Ema, tiny.Spec.SampleShape, perClass: 3, steps: 4, scale: 2);
        Assert.Equal(7, nfe); // Heun: 2N - 1
        Assert.True(rate > 0);
        using var bmp = SKBitmap.Decode(path);
        int tile = 2 * TinyImageTeacher.Resolution;
        Assert.Equal(2 * tile + 1, bmp.Height);           // two classes, one pixel between rows
        Assert.True(bmp.Width > 3 * tile + 2, $"{bmp.Width}"); // three columns plus the label margin

        // the same seeds give the same images: grids during training show the same noise maturing
        var z = ImageSampling.SeededNoise(tiny.Spec.SampleShape, 5, 3);
        Assert.True(TestUtil.Same(z[2], ImageSampling.SeededNoise(tiny.Spec.SampleShape, 7, 1)[0]));
    }

    [Fact]
    public void CliSamplesImageTeachersIntoGridsAndSingleImages()
    {
        var dir = TestUtil.TempDir();
        var outPath = Path.Combine(dir, "s.png");
        var (code, output) = CliTests.Run("--threads", "1", "sample", "--model", tiny.Dir, "--n", "4", "--class", "1", "--steps", "3", "--guidance", "2",
                                          "--each", "--seed", "10", "--out", outPath);
        log.WriteLine(output);
        Assert.Equal(0, code);
        Assert.Contains("5 NFE", output);
        Assert.Contains("images/s", output);
        using (var bmp = SKBitmap.Decode(outPath))
        {
            Assert.Equal(2 * 16 + 1, bmp.Width); // 2x2 grid, no labels for a single class
            Assert.Equal(2 * 16 + 1, bmp.Height);
        }
        var single = Directory.GetFiles(Path.Combine(dir, "s")).Order().ToArray();
        Assert.Equal(new[] { "000010.png", "000011.png", "000012.png", "000013.png" }, single.Select(Path.GetFileName));
        using (var one = SKBitmap.Decode(single[0])) Assert.Equal((16, 16), (one.Width, one.Height));
    }

    [Fact]
    public void CliTrainsAnImageTeacherOnAFolderWithGrids()
    {
        var data = TestUtil.TempDir();
        var bars = TinyImageTeacher.Bars(8, seed: 3, res: 8);
        for (int c = 0; c < 2; c++)
        {
            var idx = bars.ClassIndex!.eq(c).nonzero().squeeze(1);
            ImageGrid.SaveEach(Path.Combine(data, bars.ClassNames![c]), ImageDataset.ToFloat(bars.Images.index_select(0, idx)));
        }
        var outDir = TestUtil.TempDir();
        var (code, output) = CliTests.Run("--threads", "1", "train-image-teacher", "--data", "folder:" + data, "--resolution", "8", "--channels", "1",
            "--model-channels", "8", "--num-blocks", "1", "--steps", "4", "--batch-size", "4", "--log-every", "1",
            "--grid-every", "2", "--grid-steps", "2", "--grid-per-class", "2", "--out", outDir);
        log.WriteLine(output);
        Assert.Equal(0, code);
        Assert.Contains("images/s", output);
        foreach (var f in new[] { "samples-000002.png", "samples-000004.png", "teacher.safetensors", "teacher.json", "losses.csv", "config.json" })
            Assert.True(File.Exists(Path.Combine(outDir, f)), f);
        var spec = Assert.IsType<DdpmppSpec>(Checkpoint.LoadJson<NetworkSpec>(Path.Combine(outDir, "teacher.json")));
        Assert.Equal(("ddpmpp", 2, 8), (spec.Kind, spec.LabelDim, spec.ModelChannels));
        Assert.Equal(new[] { 1, 8, 8 }, spec.SampleShape);

        (code, output) = CliTests.Run("train-teacher", "--data", "fashion-mnist", "--out", TestUtil.TempDir());
        Assert.Equal(2, code);
        Assert.Contains("dmd train-image-teacher --data fashion-mnist", output);
    }
}
