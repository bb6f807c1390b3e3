using Dmd.IO;
using Dmd.Metrics;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// LPIPS against the lpips package's own forward (lpips 0.1.4, run from its source by TestData/lpips/make_lpips_fixture.py
/// under torch 1.13 / torchvision 0.14): state-dict names and shapes, and distances under deterministic pseudo-random
/// weights (the real weights cannot be downloaded here); then the properties DMD relies on.
/// </summary>
public class LpipsTests(ITestOutputHelper output)
{
    static string DataPath(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", "lpips", name);

    /// <summary>make_lpips_fixture.py's fill(): He-uniform convolutions, small biases, non-negative lin weights.</summary>
    static float[] Fill(string name, long[] shape)
    {
        var u = TestUtil.Uniform(name, shape.Aggregate(1L, (a, b) => a * b));
        Func<double, double> f =
            name.StartsWith("features.") && name.EndsWith(".weight") ? x => (2 * x - 1) * Math.Sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
            : name.StartsWith("features.") && name.EndsWith(".bias") ? x => 0.1 * (2 * x - 1)
            : name.StartsWith("lin") ? x => x
            : throw new ArgumentException($"no fill rule for {name}");
        return u.Select(x => (float)f(x)).ToArray();
    }

    static Lpips DeterministicLpips(string backbone)
    {
        var net = Lpips.Build(backbone);
        using var noGrad = no_grad();
        foreach (var (name, t) in net.state_dict())
            using (var v = tensor(Fill(name, t.shape), t.shape)) t.copy_(v);
        return net;
    }

    static readonly string[] Cases = { "vgg_64", "vgg_none", "alex_224" };

    [Fact]
    public void StateDictHasExactlyTorchvisionAndLpipsNamesAndShapes()
    {
        var lines = File.ReadAllLines(DataPath("lpips_state_dict.txt")).Select(l => l.Split('\t')).ToList();
        foreach (var (backbone, count) in new[] { ("vgg", 31), ("alex", 15) })  // 13 or 5 convolutions x 2, 5 lin weights
        {
            var expected = lines.Where(p => p[0] == backbone).ToDictionary(p => p[1], p => p[2]);
            using var net = Lpips.Build(backbone);
            var actual = net.state_dict().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value.shape));
            Assert.Equal(count, expected.Count);
            Assert.Equal(expected.OrderBy(kv => kv.Key), actual.OrderBy(kv => kv.Key));
            Assert.Equal(count, net.parameters().Count());  // no buffers: the scaling constants are not state
            Assert.Equal(backbone, net.Backbone);
        }
    }

    /// <summary>Runs the fixture's cases and returns the largest relative difference to the reference distances.</summary>
    double MaxRelativeError(ScalarType dtype)
    {
        var data = Checkpoint.LoadTensors(DataPath("lpips_cases.safetensors"));
        double worst = 0;
        foreach (var backbone in new[] { "vgg", "alex" })
        {
            using var net = DeterministicLpips(backbone);
            net.to(dtype);
            foreach (var c in Cases.Where(c => c.StartsWith(backbone)))
            {
                using var scope = NewDisposeScope();
                using var noGrad = no_grad();
                net.ResizeTo = (int)data[c + ".resize"].item<long>();
                var d = net.forward(data[c + ".x"].to(dtype), data[c + ".y"].to(dtype)).to(ScalarType.Float64);
                var want = data[c + (dtype == ScalarType.Float64 ? ".d_f64" : ".d_f32")].to(ScalarType.Float64);
                Assert.Equal(new[] { data[c + ".x"].shape[0] }, d.shape);
                double rel = ((d - want).abs() / want.abs()).max().item<double>();
                output.WriteLine($"{c} {dtype}: {string.Join(", ", d.data<double>().ToArray().Select(v => v.ToString("G9")))}; max relative difference {rel:G3}");
                worst = Math.Max(worst, rel);
            }
        }
        foreach (var t in data.Values) t.Dispose();
        return worst;
    }

    [Fact]
    public void DistancesMatchLpipsPackageInFloat32()
    {
        double rel = MaxRelativeError(ScalarType.Float32);
        Assert.True(rel <= 1e-5, $"max relative difference {rel:G3}");
    }

    [Fact]
    public void DistancesMatchLpipsPackageInFloat64()
    {
        // float64 removes kernel round-off: any difference left is a difference in the computation
        double rel = MaxRelativeError(ScalarType.Float64);
        Assert.True(rel <= 1e-12, $"max relative difference {rel:G3}");
    }

    static Tensor Images(long seed, params long[] shape) => rand(shape, generator: new Generator((ulong)seed)) * 2 - 1;

    [Fact]
    public void IsZeroOnIdenticalImagesAndSymmetric()
    {
        using var net = DeterministicLpips("alex");
        net.ResizeTo = 64;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Images(1, 3, 3, 32, 32);
        var y = Images(2, 3, 3, 32, 32);
        Assert.Equal(new float[] { 0, 0, 0 }, net.forward(x, x).data<float>().ToArray());
        var dxy = net.forward(x, y);
        Assert.True(dxy.min().item<float>() > 0);
        Assert.Equal(dxy.data<float>().ToArray(), net.forward(y, x).data<float>().ToArray());
    }

    [Fact]
    public void GradientReachesTheInputsButNoParameter()
    {
        using var net = DeterministicLpips("alex");
        net.to(ScalarType.Float64);
        net.ResizeTo = 48;
        using var scope = NewDisposeScope();
        var x = Images(3, 2, 1, 28, 28).to(ScalarType.Float64).requires_grad_();
        var y = Images(4, 2, 1, 28, 28).to(ScalarType.Float64);
        net.forward(x, y).sum().backward();
        Assert.True(x.grad is not null && x.grad.abs().max().item<double>() > 0);
        Assert.All(net.parameters(), p => { Assert.False(p.requires_grad); Assert.Null(p.grad); });

        // the gradient is the derivative: central difference along a random direction
        var v = Images(5, 2, 1, 28, 28).to(ScalarType.Float64);
        using var noGrad = no_grad();
        var eps = tensor(1e-5, ScalarType.Float64);
        double numeric = ((net.forward(x + eps * v, y) - net.forward(x - eps * v, y)).sum() / (2 * eps)).item<double>();
        double analytic = (x.grad! * v).sum().item<double>();
        Assert.True(Math.Abs(numeric - analytic) <= 1e-6 * Math.Abs(analytic), $"numeric {numeric} vs analytic {analytic}");
    }

    [Fact]
    public void TrainModeChangesNothing()
    {
        // lpips' lin layers carry a dropout; LPIPS is a frozen metric, so it never applies, whatever a parent module's mode
        using var net = DeterministicLpips("alex");
        net.ResizeTo = 64;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Images(6, 2, 3, 32, 32);
        var y = Images(7, 2, 3, 32, 32);
        Assert.False(net.training);
        var d = net.forward(x, y);
        net.train();
        Assert.Equal(d.data<float>().ToArray(), net.forward(x, y).data<float>().ToArray());
    }

    [Fact]
    public void GreyscaleImagesEqualTheirThreeChannelRepeat()
    {
        using var net = DeterministicLpips("alex");
        net.ResizeTo = 64;
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var x = Images(8, 2, 1, 28, 28);
        var y = Images(9, 2, 1, 28, 28);
        var grey = net.forward(x, y);
        var rgb = net.forward(x.expand(-1, 3, -1, -1).contiguous(), y.expand(-1, 3, -1, -1).contiguous());
        Assert.Equal(rgb.data<float>().ToArray(), grey.data<float>().ToArray());
    }

    /// <summary>Writes the given tensors to a temporary safetensors file, runs <paramref name="check"/> on its path, deletes it.</summary>
    static void WithFile(Dictionary<string, Tensor> tensors, Action<string> check)
    {
        string path = Path.Combine(Path.GetTempPath(), "dmd-lpips-" + Guid.NewGuid().ToString("N") + ".safetensors");
        try
        {
            Checkpoint.SaveTensors(tensors, path);
            check(path);
        }
        finally { File.Delete(path); }
    }

    [Fact]
    public void LoadRecognisesTheBackboneAndFreezesTheWeights()
    {
        using var net = DeterministicLpips("alex");
        WithFile(net.state_dict(), path =>
        {
            using var loaded = Lpips.Load(path);
            Assert.Equal("alex", loaded.Backbone);
            Assert.False(loaded.training);
            var want = net.state_dict();
            foreach (var (k, t) in loaded.state_dict()) Assert.True(t.Equals(want[k]), k);
            Assert.All(loaded.parameters(), p => Assert.False(p.requires_grad));
        });
    }

    [Fact]
    public void MissingTensorIsNamedWithTheConversionScript()
    {
        using var net = DeterministicLpips("alex");
        var tensors = net.state_dict().Where(kv => kv.Key != "lin4.model.1.weight").ToDictionary(kv => kv.Key, kv => kv.Value);
        WithFile(tensors, path =>
        {
            var e = Assert.Throws<DmdInputException>(() => Lpips.Load(path));
            Assert.Contains("LPIPS-alex", e.Message);
            Assert.Contains("1 missing (lin4.model.1.weight)", e.Message);
            Assert.Contains("tools/convert_lpips_weights.py --net alex", e.Message);
        });
    }

    [Fact]
    public void MisshapedTensorIsNamedWithTheConversionScript()
    {
        using var net = DeterministicLpips("alex");
        using var wrong = zeros(64, 3, 3, 3);
        var tensors = net.state_dict();
        tensors["features.0.weight"] = wrong;
        WithFile(tensors, path =>
        {
            var e = Assert.Throws<DmdInputException>(() => Lpips.Load(path));
            Assert.Contains("mis-shaped (features.0.weight: file [64,3,3,3] vs model [64,3,11,11])", e.Message);
            Assert.Contains("convert_lpips_weights.py", e.Message);
        });
    }

    [Fact]
    public void VggFileIsRecognisedEvenWhenEveryShapeIsWrong()
    {
        // the trunk is read from the names, so the error speaks of vgg's tensors rather than of a hundred alex mismatches
        var names = File.ReadAllLines(DataPath("lpips_state_dict.txt")).Select(l => l.Split('\t')).Where(p => p[0] == "vgg").Select(p => p[1]);
        var tensors = names.ToDictionary(n => n, _ => zeros(1));
        WithFile(tensors, path =>
        {
            var e = Assert.Throws<DmdInputException>(() => Lpips.Load(path));
            Assert.Contains("LPIPS-vgg", e.Message);
            Assert.Contains("31 mis-shaped", e.Message);
            Assert.Contains("--net vgg", e.Message);
        });
        foreach (var t in tensors.Values) t.Dispose();
    }

    [Fact]
    public void MissingOrUnreadableFileNamesTheConversionScript()
    {
        var e = Assert.Throws<DmdInputException>(() => Lpips.Load(Path.Combine(Path.GetTempPath(), "no-such-lpips.safetensors")));
        Assert.Contains("not found", e.Message);
        Assert.Contains("tools/convert_lpips_weights.py", e.Message);

        string path = Path.Combine(Path.GetTempPath(), "dmd-lpips-garbage-" + Guid.NewGuid().ToString("N") + ".safetensors");
        try
        {
            File.WriteAllBytes(path, new byte[] { 1, 2, 3 });
            e = Assert.Throws<DmdInputException>(() => Lpips.Load(path));
            Assert.Contains("not a readable safetensors file", e.Message);
        }
        finally { File.Delete(path); }
    }
}
