using Dmd.IO;
using Dmd.Metrics;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// The FID Inception network against pytorch-fid itself (TestData/make_testdata.py builds pytorch-fid's
/// fid_inception_v3 with torch 1.13 / torchvision 0.14): its state-dict names and shapes, and its features
/// under deterministic pseudo-random weights (the real weights cannot be downloaded here).
/// </summary>
public class InceptionTests
{
    static string DataPath(string name) => Path.Combine(AppContext.BaseDirectory, "TestData", name);

    /// <summary>make_testdata.py's fill(): He-scaled convolutions, BatchNorm near identity, small head.</summary>
    static float[] Fill(string name, long[] shape)
    {
        var u = TestUtil.Uniform(name, shape.Aggregate(1L, (a, b) => a * b));
        Func<double, double> f =
            name.EndsWith(".conv.weight") ? x => (2 * x - 1) * Math.Sqrt(6.0 / (shape[1] * shape[2] * shape[3]))
            : name.EndsWith(".bn.weight") ? x => 1.0 + 0.2 * (2 * x - 1)
            : name.EndsWith(".bn.bias") || name.EndsWith(".running_mean") ? x => 0.1 * (2 * x - 1)
            : name.EndsWith(".running_var") ? x => 0.5 + x
            : name == "fc.weight" ? x => (2 * x - 1) * Math.Sqrt(3.0 / shape[1])
            : name == "fc.bias" ? x => 0.01 * (2 * x - 1)
            : throw new KeyError(name);
        return u.Select(x => (float)f(x)).ToArray();
    }

    sealed class KeyError(string name) : Exception($"no fill rule for {name}");

    static FidInceptionV3 DeterministicNetwork()
    {
        var net = new FidInceptionV3();
        using var noGrad = no_grad();
        foreach (var (name, t) in net.state_dict())
            if (!name.EndsWith("num_batches_tracked"))
                using (var v = tensor(Fill(name, t.shape), t.shape)) t.copy_(v);
        net.eval();
        return net;
    }

    /// <summary>make_testdata.py's input: float32(2u - 1) of the stream "input", shape (2, 3, 64, 64).</summary>
    static Tensor DeterministicInput() =>
        tensor(TestUtil.Uniform("input", 2 * 3 * 64 * 64).Select(u => (float)(2.0 * u - 1.0)).ToArray(), new long[] { 2, 3, 64, 64 });

    static Tensor Expected(string key) => Npz.Load(DataPath("inception_features.npz"), key)[key];

    [Fact]
    public void StateDictHasExactlyPytorchFidNamesAndShapes()
    {
        var expected = File.ReadAllLines(DataPath("inception_state_dict.txt"))
            .Select(l => l.Split('\t')).ToDictionary(p => p[0], p => p[1]);
        using var net = new FidInceptionV3();
        var actual = net.state_dict().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value.shape));
        Assert.Equal(566, expected.Count);  // 94 conv+BN units x 6 entries, fc weight and bias
        Assert.Empty(expected.Keys.Except(actual.Keys));
        Assert.Empty(actual.Keys.Except(expected.Keys));
        foreach (var (k, shape) in expected) Assert.True(shape == actual[k], $"{k}: pytorch-fid [{shape}] vs [{actual[k]}]");
        Assert.Equal(1008L * 2048, net.state_dict()["fc.weight"].numel());
    }

    [Fact]
    public void FeaturesMatchPytorchFidInFloat64()
    {
        // float64 removes kernel round-off, so any difference is a difference in the architecture (seen: 1e-15 relative)
        using var net = DeterministicNetwork();
        net.to(ScalarType.Float64);
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var features = net.forward(DeterministicInput().to(ScalarType.Float64));
        Assert.Equal(new long[] { 2, FidInceptionV3.FeatureDim }, features.shape);
        var expected = Expected("features_f64");
        double err = (features - expected).abs().max().item<double>(), size = expected.abs().max().item<double>();
        Assert.True(err <= 1e-12 * size, $"max |difference| {err:G3} for features up to {size:G3}");
    }

    [Fact]
    public void MapsTwoImagesTo2048FeaturesMatchingPytorchFidInFloat32()
    {
        using var net = DeterministicNetwork();
        using var scope = NewDisposeScope();
        var features = net.Features(DeterministicInput(), batchSize: 1);  // batching must not change anything (seen: 5e-7 relative)
        Assert.Equal(ScalarType.Float32, features.dtype);
        Assert.Equal(new long[] { 2, FidInceptionV3.FeatureDim }, features.shape);
        var expected = Expected("features_f32");
        double err = (features.to(ScalarType.Float64) - expected).abs().max().item<double>(), size = expected.abs().max().item<double>();
        Assert.True(err <= 1e-5 * size, $"max |difference| {err:G3} for features up to {size:G3}");
    }

    [Fact]
    public void GreyscaleImagesAreRepeatedToThreeChannels()
    {
        using var net = new FidInceptionV3();
        using var scope = NewDisposeScope();
        var grey = rand(new long[] { 1, 1, 28, 28 }, generator: new Generator(7)) * 2 - 1;
        var a = net.Features(grey);
        var b = net.Features(grey.expand(-1, 3, -1, -1).contiguous());
        Assert.Equal(new long[] { 1, FidInceptionV3.FeatureDim }, a.shape);
        Assert.True(a.allclose(b, rtol: 0, atol: 0));
    }

    [Fact]
    public void ConvertedWeightsLoadEvenWithoutBatchNormCounters()
    {
        // the converter may see a .pth without num_batches_tracked: those counters are optional, the rest is not
        string dir = Path.Combine(Path.GetTempPath(), "dmd-inception-" + Guid.NewGuid().ToString("N"));
        try
        {
            using var net = DeterministicNetwork();
            var tensors = net.state_dict().Where(kv => !kv.Key.EndsWith("num_batches_tracked")).ToDictionary(kv => kv.Key, kv => kv.Value);
            string path = Path.Combine(dir, "fid_inception.safetensors");
            Checkpoint.SaveTensors(tensors, path);
            using var loaded = FidInceptionV3.Load(path);
            Assert.False(loaded.training);
            var want = net.state_dict();
            foreach (var (k, t) in loaded.state_dict())
                if (!k.EndsWith("num_batches_tracked")) Assert.True(t.Equals(want[k]), k);
        }
        finally { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
    }

    [Fact]
    public void MissingWeightsNameTheConversionScript()
    {
        var e = Assert.Throws<DmdInputException>(() => FidInceptionV3.Load(Path.Combine(Path.GetTempPath(), "no-such-fid-inception.safetensors")));
        Assert.Contains("tools/convert_inception_weights.py", e.Message);
        Assert.Contains("pt_inception-2015-12-05-6726825d.pth", e.Message);
    }

    [Fact]
    public void WrongWeightsFileIsRejectedWithTheConversionHint()
    {
        string path = Path.Combine(Path.GetTempPath(), "dmd-not-inception-" + Guid.NewGuid().ToString("N") + ".safetensors");
        try
        {
            using (var w = zeros(4, 4)) Checkpoint.SaveTensors(new Dictionary<string, Tensor> { ["fc.weight"] = w }, path);
            var e = Assert.Throws<DmdInputException>(() => FidInceptionV3.Load(path));
            Assert.Contains("convert_inception_weights.py", e.Message);
        }
        finally { File.Delete(path); }
    }
}
