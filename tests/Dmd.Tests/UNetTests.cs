using System.Globalization;
using Dmd.Diffusion;
using Dmd.Networks;
using TorchSharp;
using TorchSharp.PyBridge;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

public sealed class UNetTests
{
    private readonly ITestOutputHelper output;

    public UNetTests(ITestOutputHelper output) => this.output = output;

    // ---------------------------------------------------------------- (a) EDM checkpoint names and shapes

    [Theory]
    [InlineData("imagenet64_cond_adm")]
    [InlineData("cifar10_cond_ddpmpp")]
    [InlineData("cifar10_uncond_ncsnpp")]
    public void FullSizePresetStateDictMatchesEdmCheckpointNamesAndShapes(string preset)
    {
        var (expected, headerValues) = ReadReference($"edm_keys_{preset}.txt");
        EdmBackbone backbone = preset switch
        {
            "imagenet64_cond_adm" => EdmUNetPresets.Imagenet64AdmCond(),
            "cifar10_cond_ddpmpp" => EdmUNetPresets.Cifar10DdpmppCond(),
            "cifar10_uncond_ncsnpp" => EdmUNetPresets.Cifar10NcsnppUncond(),
            _ => throw new ArgumentException(preset),
        };
        using var net = new EdmPrecond(backbone);
        var actual = net.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);

        var missing = expected.Keys.Where(k => !actual.ContainsKey(k)).ToList();
        var unexpected = actual.Keys.Where(k => !expected.ContainsKey(k)).ToList();
        var misShaped = expected.Keys.Where(k => actual.ContainsKey(k) && !actual[k].SequenceEqual(expected[k]))
            .Select(k => $"{k}: [{string.Join(",", actual[k])}] vs [{string.Join(",", expected[k])}]").ToList();
        Assert.True(missing.Count == 0 && unexpected.Count == 0 && misShaped.Count == 0,
            $"missing: {string.Join(" ", missing.Take(10))}\nunexpected: {string.Join(" ", unexpected.Take(10))}\n" +
            $"mis-shaped: {string.Join(" ", misShaped.Take(10))}");
        Assert.Equal(expected.Count, actual.Count);

        long values = actual.Values.Sum(s => s.Aggregate(1L, (a, b) => a * b));
        Assert.Equal(headerValues, Math.Round(values / 1e6, 2));
        long parameters = net.parameters().Sum(p => p.numel());
        output.WriteLine($"{preset}: {actual.Count} tensors, {values} values, {parameters} trainable parameters");
    }

    /// <summary>Reference list: "# name: N tensors, V M values" then "key [d0, d1, ...]" per line.</summary>
    private static (Dictionary<string, long[]> Shapes, double MillionValues) ReadReference(string file)
    {
        var lines = File.ReadAllLines(Path.Combine(AppContext.BaseDirectory, "TestData", file));
        var header = lines[0].Split(',')[1].Trim().Split(' ')[0];
        var shapes = new Dictionary<string, long[]>();
        foreach (var line in lines.Where(l => l.Length > 0 && !l.StartsWith('#')))
        {
            int space = line.IndexOf(' ');
            var dims = line[(space + 1)..].Trim('[', ']', ' ');
            shapes.Add(line[..space], dims.Length == 0 ? Array.Empty<long>()
                : dims.Split(',').Select(d => long.Parse(d.Trim(), CultureInfo.InvariantCulture)).ToArray());
        }
        return (shapes, double.Parse(header, CultureInfo.InvariantCulture));
    }

    // ---------------------------------------------------------------- numerical parity with EDM's Python code

    /// <summary>The tiny networks of TestData/edm_parity/README.md, built with this library.</summary>
    private static EdmUNet ParityNet(string kind) => kind switch
    {
        "ddpmpp" => new SongUNet(16, 3, 3, labelDim: 4, augmentDim: 9, modelChannels: 8, channelMult: new[] { 1, 2 },
            numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0),
        "ncsnpp" => new SongUNet(16, 3, 3, labelDim: 4, augmentDim: 9, modelChannels: 8, channelMult: new[] { 1, 2 },
            numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0, embeddingType: NoiseEmbeddingType.Fourier,
            channelMultNoise: 2, encoderType: SongEncoderType.Residual, resampleFilter: new[] { 1.0, 3, 3, 1 }),
        "song_skip" => new SongUNet(16, 3, 2, labelDim: 4, augmentDim: 9, modelChannels: 8, channelMult: new[] { 1, 2, 2 },
            numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0, encoderType: SongEncoderType.Skip,
            decoderType: SongDecoderType.Skip),
        "adm" => new DhariwalUNet(16, 3, 3, labelDim: 4, augmentDim: 9, modelChannels: 16, channelMult: new[] { 1, 1 },
            numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0),
        _ => throw new ArgumentException(kind),
    };

    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("ncsnpp")]
    [InlineData("song_skip")]
    [InlineData("adm")]
    public void UNetReproducesEdmOutputsFromWeightsLoadedByName(string kind)
    {
        using var scope = NewDisposeScope();
        var file = Safetensors.LoadStateDict(Path.Combine(AppContext.BaseDirectory, "TestData", "edm_parity", $"edm_parity_{kind}.safetensors"));
        var weights = file.Where(kv => !kv.Key.StartsWith("io.")).ToDictionary(kv => kv.Key, kv => kv.Value);
        using var net = ParityNet(kind);
        net.eval();

        net.load_state_dict(weights, strict: true);   // EDM's names as they are: no mapping table

        using var noGrad = no_grad();
        var y = net.forward(file["io.x"], file["io.c_noise"], file["io.labels"], file["io.augment_labels"]);
        var yNoAugment = net.forward(file["io.x"], file["io.c_noise"], file["io.labels"]);
        double d = (y - file["io.output"]).abs().max().item<float>();
        double dNoAugment = (yNoAugment - file["io.output_no_augment"]).abs().max().item<float>();
        output.WriteLine($"{kind}: max |ours - EDM| = {d:E2} (without augment labels {dNoAugment:E2})");
        Assert.True(d < 2e-5 && dNoAugment < 2e-5, $"max |ours - EDM| = {d:E2}, without augment labels {dNoAugment:E2}");
    }

    // ---------------------------------------------------------------- (b) attention qkv channel order

    /// <summary>Channel of the qkv output holding part j (0 q, 1 k, 2 v) of channel c of head h (DESIGN.md 5).</summary>
    private static int EdmQkvChannel(int h, int c, int j, int heads, int d) => 3 * (h * d + c) + j;

    /// <summary>The layout a naive port would use, [q|k|v][head][channel]: must give different results.</summary>
    private static int BlockwiseQkvChannel(int h, int c, int j, int heads, int d) => j * heads * d + h * d + c;

    /// <summary>
    /// Multi-head attention written out with explicit indices: qkv (B, 3C, HW) as a flat array,
    /// result (B, C, HW) with output channel h d + c.
    /// </summary>
    private static double[] ReferenceAttention(float[] qkv, int batch, int channels, int heads, int hw,
        Func<int, int, int, int, int, int> layout)
    {
        int d = channels / heads;
        var result = new double[batch * channels * hw];
        double At(int b, int h, int c, int j, int p) => qkv[(b * 3 * channels + layout(h, c, j, heads, d)) * hw + p];
        for (int b = 0; b < batch; b++)
        for (int h = 0; h < heads; h++)
        for (int p = 0; p < hw; p++)
        {
            var logits = new double[hw];
            for (int p2 = 0; p2 < hw; p2++)
            {
                double s = 0;
                for (int c = 0; c < d; c++) s += At(b, h, c, 0, p) * At(b, h, c, 1, p2);
                logits[p2] = s / Math.Sqrt(d);
            }
            double max = logits.Max(), z = logits.Sum(l => Math.Exp(l - max));
            for (int c = 0; c < d; c++)
            {
                double a = 0;
                for (int p2 = 0; p2 < hw; p2++) a += Math.Exp(logits[p2] - max) / z * At(b, h, c, 2, p2);
                result[(b * channels + h * d + c) * hw + p] = a;
            }
        }
        return result;
    }

    private static double MaxAbsDiff(Tensor t, double[] reference) =>
        t.contiguous().data<float>().ToArray().Select((v, i) => Math.Abs(v - reference[i])).Max();

    [Fact]
    public void SelfAttentionReadsQkvChannelsAsHeadThenChannelThenQkv()
    {
        using var scope = NewDisposeScope();
        const int batch = 2, channels = 8, heads = 2, side = 3;
        var gen = new Generator(11);
        var qkv = randn(new long[] { batch, 3 * channels, side, side }, generator: gen);
        var flat = qkv.contiguous().data<float>().ToArray();

        var a = UNetBlock.SelfAttention(qkv, heads);

        Assert.Equal(new long[] { batch, channels, side, side }, a.shape);
        var edm = ReferenceAttention(flat, batch, channels, heads, side * side, EdmQkvChannel);
        var blockwise = ReferenceAttention(flat, batch, channels, heads, side * side, BlockwiseQkvChannel);
        Assert.True(MaxAbsDiff(a, edm) < 1e-5, $"differs from the [head][channel][q|k|v] reference by {MaxAbsDiff(a, edm)}");
        Assert.True(MaxAbsDiff(a, blockwise) > 1e-2, "the test cannot tell the two layouts apart");
    }

    private static UNetBlock AttentionBlock(int channels, int heads, int embChannels) =>
        new(channels, channels, new UNetBlockOptions { EmbChannels = embChannels, NumHeads = heads }, attention: true);

    private static void Set(nn.Module module, string name, Tensor value)
    {
        using var noGrad = no_grad();
        module.state_dict()[name].copy_(value);
    }

    [Fact]
    public void AttentionBlockTakesValuesFromEveryThirdQkvChannel()
    {
        // qkv weight 0, q and k biases 0 => uniform attention, so the attention output is the v bias.
        // The v bias of channel c of head h (qkv channel 3 (h d + c) + 2) is set to h d + c + 1; proj is
        // the identity and conv1 is zero (EDM's init_zero), so block(x) - x = v bias in channel h d + c.
        using var scope = NewDisposeScope();
        const int channels = 8, heads = 2, d = channels / heads, emb = 16;
        using var block = AttentionBlock(channels, heads, emb);
        var bias = zeros(3 * channels);
        for (int h = 0; h < heads; h++)
        for (int c = 0; c < d; c++)
            bias[EdmQkvChannel(h, c, 2, heads, d)] = tensor((float)(h * d + c + 1));
        Set(block, "qkv.weight", zeros(3 * channels, channels, 1, 1));
        Set(block, "qkv.bias", bias);
        Set(block, "proj.weight", eye(channels).reshape(channels, channels, 1, 1));

        var x = randn(2, channels, 4, 4);
        var diff = block.forward(x, randn(2, emb)) - x;

        var expected = arange(1, channels + 1, dtype: ScalarType.Float32).reshape(1, channels, 1, 1).expand_as(diff);
        Assert.True(diff.allclose(expected, rtol: 0, atol: 1e-5));
    }

    [Fact]
    public void AttentionBlockMatchesHandIndexedMultiHeadAttention()
    {
        // With conv1 zero (EDM's init_zero) the residual part is the identity, so
        // block(x) = x + proj(attention(qkv(norm2(x)))), written out here with explicit channel indices.
        using var scope = NewDisposeScope();
        const int batch = 2, channels = 8, heads = 2, side = 4, emb = 16;
        using var block = AttentionBlock(channels, heads, emb);
        var gen = new Generator(5);
        var wQkv = randn(new long[] { 3 * channels, channels, 1, 1 }, generator: gen) * 0.7;
        var bQkv = randn(new long[] { 3 * channels }, generator: gen) * 0.1;
        var wProj = randn(new long[] { channels, channels, 1, 1 }, generator: gen) * 0.3;
        var bProj = randn(new long[] { channels }, generator: gen) * 0.1;
        Set(block, "qkv.weight", wQkv);
        Set(block, "qkv.bias", bQkv);
        Set(block, "proj.weight", wProj);
        Set(block, "proj.bias", bProj);
        var x = randn(new long[] { batch, channels, side, side }, generator: gen);

        var actual = block.forward(x, randn(new long[] { batch, emb }, generator: gen));

        var normed = nn.functional.group_norm(x, 2, eps: 1e-5);        // EDM: min(32, 8 / 4) = 2 groups
        var qkv = nn.functional.conv2d(normed, wQkv, bQkv).contiguous().data<float>().ToArray();
        var a = ReferenceAttention(qkv, batch, channels, heads, side * side, EdmQkvChannel);
        var aTensor = tensor(a.Select(v => (float)v).ToArray(), new long[] { batch, channels, side, side });
        var expected = x + nn.functional.conv2d(aTensor, wProj, bProj);
        Assert.True(actual.allclose(expected, rtol: 0, atol: 1e-4),
            $"max difference {(actual - expected).abs().max().item<float>()}");
    }

    [Theory]
    [InlineData(64, 16)]
    [InlineData(768, 32)]
    [InlineData(16, 4)]
    [InlineData(4, 1)]
    public void GroupNormUsesAtMost32GroupsOfAtLeast4Channels(int channels, int groups)
    {
        using var norm = new EdmGroupNorm(channels);
        Assert.Equal(groups, norm.NumGroups);
    }

    [Fact]
    public void PositionalEmbeddingIsCosThenSinOfGeometricFrequencies()
    {
        using var scope = NewDisposeScope();
        using var endpoint = new PositionalEmbedding(8, endpoint: true);
        using var plain = new PositionalEmbedding(8);
        var x = tensor(new[] { 0.7f });
        var e1 = endpoint.forward(x).data<float>().ToArray();
        var e0 = plain.forward(x).data<float>().ToArray();
        for (int i = 0; i < 4; i++)
        {
            double f1 = Math.Pow(1e-4, i / 3.0), f0 = Math.Pow(1e-4, i / 4.0);
            Assert.Equal(Math.Cos(0.7 * f1), e1[i], 5);
            Assert.Equal(Math.Sin(0.7 * f1), e1[i + 4], 5);
            Assert.Equal(Math.Cos(0.7 * f0), e0[i], 5);
            Assert.Equal(Math.Sin(0.7 * f0), e0[i + 4], 5);
        }
    }

    // ---------------------------------------------------------------- (c) tiny networks run and train

    private const int Classes = 4, AugmentDim = 9;

    /// <summary>Tiny versions of each encoder/decoder/embedding variant, 16x16 RGB.</summary>
    private static EdmUNet Tiny(string kind) => kind switch
    {
        "ddpmpp" => new SongUNet(16, 3, 3, labelDim: Classes, augmentDim: AugmentDim, modelChannels: 16,
            channelMult: new[] { 1, 2 }, numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0),
        "ncsnpp" => new SongUNet(16, 3, 3, labelDim: Classes, augmentDim: AugmentDim, modelChannels: 16,
            channelMult: new[] { 1, 2 }, numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0,
            embeddingType: NoiseEmbeddingType.Fourier, channelMultNoise: 2, encoderType: SongEncoderType.Residual,
            resampleFilter: new[] { 1.0, 3, 3, 1 }),
        "song-skip" => new SongUNet(16, 3, 2, labelDim: Classes, augmentDim: AugmentDim, modelChannels: 16,
            channelMult: new[] { 1, 2, 2 }, numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0,
            encoderType: SongEncoderType.Skip, decoderType: SongDecoderType.Skip),
        "adm" => new DhariwalUNet(16, 3, 3, labelDim: Classes, augmentDim: AugmentDim, modelChannels: 16,
            channelMult: new[] { 1, 2 }, numBlocks: 1, attnResolutions: new[] { 8 }, dropout: 0, channelsPerHead: 8),
        _ => throw new ArgumentException(kind),
    };

    private static (Tensor X, Tensor CNoise, Tensor Labels, Tensor Augment) Batch(int seed)
    {
        var gen = new Generator((ulong)seed);
        var x = randn(new long[] { 2, 3, 16, 16 }, generator: gen);
        var cNoise = tensor(new[] { Math.Log(0.3) / 4, Math.Log(20.0) / 4 }).to(ScalarType.Float32);
        var labels = nn.functional.one_hot(tensor(new long[] { 1, 3 }), Classes).to(ScalarType.Float32);
        var augment = randn(new long[] { 2, AugmentDim }, generator: gen) * 0.5;
        return (x, cNoise, labels, augment);
    }

    /// <summary>Moves every parameter off EDM's zero/near-zero init so that every path carries signal.</summary>
    private static void Perturb(nn.Module net, int seed)
    {
        using var noGrad = no_grad();
        var gen = new Generator((ulong)seed);
        foreach (var p in net.parameters())
            p.add_(randn(p.shape, generator: gen) * 0.05);
    }

    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("ncsnpp")]
    [InlineData("song-skip")]
    [InlineData("adm")]
    public void TinyUNetMapsLabelledBatchToFiniteImagesOfTheOutputShape(string kind)
    {
        using var scope = NewDisposeScope();
        using var net = Tiny(kind);
        Perturb(net, 1);
        var (x, cNoise, labels, augment) = Batch(2);

        var y = net.forward(x, cNoise, labels, augment);

        Assert.Equal(new long[] { 2, net.OutChannels, 16, 16 }, y.shape);
        Assert.True(y.isfinite().all().item<bool>());
        Assert.True(y.std().item<float>() > 1e-3, "output is constant");
    }

    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("ncsnpp")]
    [InlineData("song-skip")]
    [InlineData("adm")]
    public void GradientsReachEveryParameterOfTinyUNet(string kind)
    {
        using var scope = NewDisposeScope();
        using var net = Tiny(kind);
        Perturb(net, 3);
        var (x, cNoise, labels, augment) = Batch(4);

        net.forward(x, cNoise, labels, augment).square().mean().backward();

        var dead = net.named_parameters()
            .Where(p => p.parameter.grad is null || !p.parameter.grad.isfinite().all().item<bool>()
                        || p.parameter.grad.abs().sum().item<float>() == 0)
            .Select(p => p.name).ToList();
        Assert.True(dead.Count == 0, $"no gradient in: {string.Join(", ", dead)}");
    }

    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("ncsnpp")]
    [InlineData("adm")]
    public void BottleneckIsTheEncoderOutputAndLeavesTheForwardUnchanged(string kind)
    {
        using var scope = NewDisposeScope();
        using var net = Tiny(kind);
        net.eval();
        Perturb(net, 5);
        var (x, cNoise, labels, augment) = Batch(6);

        var plain = net.forward(x, cNoise, labels, augment);
        var (output, bottleneck) = net.ForwardWithBottleneck(x, cNoise, labels, augment);
        var encoderOnly = net.Bottleneck(x, cNoise, labels, augment);

        Assert.True(BitIdentical(plain, output));
        Assert.Equal(new long[] { 2, net.BottleneckChannels, net.BottleneckResolution, net.BottleneckResolution }, bottleneck.shape);
        Assert.Equal(new long[] { 2, 32, 8, 8 }, bottleneck.shape);
        Assert.True(BitIdentical(bottleneck, encoderOnly));
    }

    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("adm")]
    public void MissingClassAndAugmentLabelsActAsZeros(string kind)
    {
        using var scope = NewDisposeScope();
        using var net = Tiny(kind);
        net.eval();
        Perturb(net, 7);
        var (x, cNoise, _, _) = Batch(8);

        var withNulls = net.forward(x, cNoise, null, null);
        var withZeros = net.forward(x, cNoise, zeros(2, Classes), zeros(2, AugmentDim));

        Assert.True(withNulls.allclose(withZeros, rtol: 0, atol: 1e-6));
    }

    // ---------------------------------------------------------------- (d) safetensors round trip

    private static bool BitIdentical(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();

    [Theory]
    [InlineData("ddpmpp")]
    [InlineData("ncsnpp")]
    [InlineData("adm")]
    public void SafetensorsRoundTripReproducesOutputsBitForBit(string kind)
    {
        using var scope = NewDisposeScope();
        string path = Path.Combine(Path.GetTempPath(), $"dmd-unet-{kind}-{Guid.NewGuid():N}.safetensors");
        try
        {
            using var saved = new EdmPrecond(Tiny(kind));
            Perturb(saved, 9);
            saved.save_safetensors(path);

            using var fresh = new EdmPrecond(Tiny(kind));
            fresh.load_safetensors(path);
            saved.eval();
            fresh.eval();

            var (x, _, labels, _) = Batch(10);
            var sigma = tensor(new[] { 0.5f, 7.0f });
            var before = saved.forward(x, sigma, labels);
            var after = fresh.forward(x, sigma, labels);
            Assert.True(BitIdentical(before, after));
            Assert.Equal(saved.state_dict().Keys.OrderBy(k => k), fresh.state_dict().Keys.OrderBy(k => k));
        }
        finally
        {
            File.Delete(path);
        }
    }
}
