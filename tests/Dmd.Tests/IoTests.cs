using Dmd.Data;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

public class IoTests
{
    [Fact]
    public void CheckpointsRoundTripBitForBit()
    {
        var spec = new MlpSpec { Shape = new[] { 3 }, LabelDim = 4, SigmaData = 0.9, Width = 48, Depth = 2 };
        var a = spec.Build();
        var path = Path.Combine(TestUtil.TempDir(), "m.safetensors");
        DenoiserFile.Save(a, spec, path);
        var (b, spec2) = DenoiserFile.Load(path);
        Assert.Equal(spec.SampleShape, spec2.SampleShape);
        Assert.Equal(spec with { Shape = null }, spec2 with { Shape = null });
        var sa = a.state_dict(); var sb = b.state_dict();
        Assert.Equal(sa.Keys, sb.Keys);
        foreach (var k in sa.Keys) Assert.True(TestUtil.Same(sa[k], sb[k]), k);
        using var g = new Generator(2);
        var x = randn(new long[] { 7, 3 }, generator: g);
        var y = Rng.OneHotLabels(4, 7, g);
        var s = full(7, 0.3f);
        using var _ = no_grad();
        Assert.True(TestUtil.Same(a.Denoise(x, s, y), b.Denoise(x, s, y)));
    }

    [Fact]
    public void MismatchedWeightsAreReportedByName()
    {
        var path = Path.Combine(TestUtil.TempDir(), "m.safetensors");
        Checkpoint.SaveModule(new MlpSpec { Shape = new[] { 2 }, LabelDim = 0, SigmaData = 0.5, Width = 32, Depth = 2 }.Build(), path);
        var wider = new MlpSpec { Shape = new[] { 2 }, LabelDim = 0, SigmaData = 0.5, Width = 64, Depth = 2 }.Build();
        var e = Assert.Throws<DmdInputException>(() => Checkpoint.LoadModule(wider, path));
        Assert.Contains("mis-shaped", e.Message);
        Assert.Contains("model.input.weight", e.Message);
        var deeper = new MlpSpec { Shape = new[] { 2 }, LabelDim = 0, SigmaData = 0.5, Width = 32, Depth = 3 }.Build();
        e = Assert.Throws<DmdInputException>(() => Checkpoint.LoadModule(deeper, path));
        Assert.Contains("missing", e.Message);
        Assert.Contains("model.blocks.2", e.Message);
    }

    [Fact]
    public void MissingOrCorruptFilesGiveClearErrors()
    {
        var dir = TestUtil.TempDir();
        var e = Assert.Throws<DmdInputException>(() => DenoiserFile.Load(Path.Combine(dir, "nope.safetensors")));
        Assert.Contains("not found", e.Message);
        var bad = Path.Combine(dir, "bad.safetensors");
        File.WriteAllText(bad, "this is not a safetensors file");
        e = Assert.Throws<DmdInputException>(() => Checkpoint.LoadModule(new MlpSpec().Build(), bad));
        Assert.Contains("not a readable safetensors file", e.Message);
    }

    [Fact]
    public void CsvPointsRoundTripWithLabels()
    {
        var path = Path.Combine(TestUtil.TempDir(), "p.csv");
        var pts = tensor(new float[] { 0.5f, -1.25f, 3f, 1e-3f, 2f, 4f, -7f, 0f, 1f }, new long[] { 3, 3 });
        PointSet.ToCsv(path, pts, tensor(new long[] { 0, 2, 1 }));
        var set = PointSet.FromCsv(path);
        Assert.Equal(3, set.Dim);
        Assert.Equal(3, set.NumClasses);
        Assert.True(TestUtil.Same(set.Points, pts));
        Assert.Equal(new long[] { 0, 2, 1 }, set.ClassIndex!.data<long>().ToArray());
    }

    [Fact]
    public void BadCsvInputGivesClearErrors()
    {
        var dir = TestUtil.TempDir();
        var e = Assert.Throws<DmdInputException>(() => PointSet.FromCsv(Path.Combine(dir, "missing.csv")));
        Assert.Contains("not found", e.Message);

        var ragged = Path.Combine(dir, "ragged.csv");
        File.WriteAllText(ragged, "x,y\n1,2\n3,4,5\n");
        e = Assert.Throws<DmdInputException>(() => PointSet.FromCsv(ragged));
        Assert.Contains("line 3", e.Message);

        var text = Path.Combine(dir, "text.csv");
        File.WriteAllText(text, "1,2\n3,abc\n");
        e = Assert.Throws<DmdInputException>(() => PointSet.FromCsv(text));
        Assert.Contains("line 2, column 2", e.Message);
        Assert.Contains("'abc'", e.Message);

        var threeD = Path.Combine(dir, "three.csv");
        File.WriteAllText(threeD, "1,2,3\n4,5,6\n");
        e = Assert.Throws<DmdInputException>(() => PointSet.FromCsv(threeD, expectedDim: 2));
        Assert.Contains("3 coordinates but the model expects 2", e.Message);
        Assert.Equal(3, PointSet.FromCsv(threeD).Dim);
    }

    [Fact]
    public void UnknownDistributionNamesTheChoices()
    {
        var e = Assert.Throws<DmdInputException>(() => DataSource.Parse("spiral"));
        Assert.Contains("ring8", e.Message);
        Assert.Contains("csv:PATH", e.Message);
    }

    [Fact]
    public void BuiltInDistributionsHaveTheirDocumentedShape()
    {
        foreach (var name in PointDistributions.Names)
        {
            var s = PointDistributions.Sample(name, 4000, 1);
            Assert.Equal(new long[] { 4000, 2 }, s.Points.shape);
            Assert.True(s.Points.abs().max().item<float>() < 3.5f, name);
            Assert.True(s.NumClasses > 1, name);
        }
        var ring = PointDistributions.Sample("ring8", 8000, 1);
        var r = ring.Points.norm(1);
        Assert.InRange(r.mean().item<float>(), 1.95f, 2.05f);
        Assert.Equal(8, ring.ClassIndex!.unique().Item1.shape[0]);
        var board = PointDistributions.Sample("checkerboard", 8000, 1).Points;
        // every point sits on a square with even (row + col)
        var cell = (board + 2).floor().to(ScalarType.Int64);
        Assert.True(((cell[.., 0] + cell[.., 1]) % 2 == 0).all().item<bool>());
    }

    /// <summary>A resumed run that logs a new loss (the GAN's, switched on at resume) widens the log instead of dropping it.</summary>
    [Fact]
    public void ALossAddedOnResumeWidensTheLog()
    {
        var path = Path.Combine(TestUtil.TempDir(), "losses.csv");
        new CsvLog(path, append: false).Write(10, new Dictionary<string, double> { ["loss_dm"] = 1.5 });
        var resumed = new CsvLog(path, append: true);
        resumed.Write(20, new Dictionary<string, double> { ["loss_dm"] = 1.25, ["loss_gan_g"] = 0.5 });
        resumed.Write(30, new Dictionary<string, double> { ["loss_gan_g"] = 0.25 });
        Assert.Equal("step,loss_dm,loss_gan_g", File.ReadLines(path).First());
        var log = CsvLog.Read(path);
        Assert.Equal(new[] { (10, 1.5), (20, 1.25) }, log["loss_dm"]);
        Assert.Equal(new[] { (20, 0.5), (30, 0.25) }, log["loss_gan_g"]);
    }
}
