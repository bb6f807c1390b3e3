using Dmd.Diffusion;
using Dmd.Metrics;
using Dmd.Networks;
using TorchSharp;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// The device path (`--device cuda`) as far as a machine without a GPU can check it: every network moves to another
/// device with all its weights (libtorch's meta device stands in for CUDA: it takes no memory and runs no kernels), the
/// samplers and generators bring their host-drawn noise to the network's device, and the CLI refuses a device this
/// build cannot use with a one-line error. Nothing here runs a kernel on a GPU.
/// </summary>
public class DeviceTests
{
    static readonly Device Meta = new(DeviceType.META);

    /// <summary>Every network kind the project builds, with a name for messages.</summary>
    static IEnumerable<(string Name, nn.Module Net)> Networks()
    {
        yield return ("mlp", new MlpSpec { Shape = new[] { 2 }, LabelDim = 3, SigmaData = 0.5, Width = 32, Depth = 2 }.Build());
        var unet = new DdpmppSpec { Shape = new[] { 1, 16, 16 }, LabelDim = 3, SigmaData = 0.5, ModelChannels = 8, ChannelMult = new[] { 1, 2 }, NumBlocks = 1, AttnResolutions = new[] { 8 } };
        yield return ("ddpmpp", unet.Build());
        yield return ("ncsnpp (fourier, residual encoder)", new EdmPrecond(new SongUNet(16, 3, 3, labelDim: 4, augmentDim: 9, modelChannels: 8, channelMult: new[] { 1, 2 },
            numBlocks: 1, attnResolutions: new[] { 8 }, embeddingType: NoiseEmbeddingType.Fourier, channelMultNoise: 2,
            encoderType: SongEncoderType.Residual, decoderType: SongDecoderType.Standard, resampleFilter: new[] { 1.0, 3.0, 3.0, 1.0 })));
        yield return ("adm", new AdmSpec { Shape = new[] { 3, 16, 16 }, LabelDim = 4, SigmaData = 0.5, ModelChannels = 16, ChannelMult = new[] { 1, 1 }, NumBlocks = 1, AttnResolutions = new[] { 8 } }.Build());
        yield return ("GAN head on a U-Net bottleneck", new GanClassifier(new long[] { 16, 8, 8 }));
        yield return ("GAN head on MLP features", new GanClassifier(new long[] { 32 }));
        yield return ("Fashion-MNIST classifier", new FmnistClassifier());
        string Fixture(string folder) => Path.Combine(AppContext.BaseDirectory, "TestData", folder);
        yield return ("SD UNet2DConditionModel (tiny)", UNet2DConditionModel.FromPretrained(Path.Combine(Fixture("sd_parity"), "unet")));
        yield return ("SD AutoencoderKL (tiny)", AutoencoderKL.FromPretrained(Path.Combine(Fixture("sd_parity"), "vae")));
        yield return ("CLIP text model (tiny)", ClipTextModel.FromFolder(Path.Combine(Fixture("clip_parity"), "text_encoder")));
    }

    [Fact]
    public void EveryNetworkMovesToAnotherDeviceWithAllItsWeights()
    {
        // TorchSharp's ModuleDict failed here ("An item with the same key has already been added. Key: Item"): every
        // U-Net would have thrown on `--device cuda` before its first step
        foreach (var (name, net) in Networks())
        {
            var before = net.state_dict().ToDictionary(kv => kv.Key, kv => kv.Value.shape);
            net.to(Meta);
            var after = net.state_dict();
            Assert.True(before.Keys.SequenceEqual(after.Keys), $"{name}: the weights' names changed on the move");
            foreach (var (key, t) in after)
            {
                Assert.True(t.device_type == DeviceType.META, $"{name}: {key} stayed on {t.device}");
                Assert.Equal(before[key], t.shape);
            }
            Assert.All(net.parameters(), p => Assert.True(p.requires_grad || name.Contains("classifier"), $"{name}: a parameter lost requires_grad"));
            if (net is EdmPrecond d) Assert.Equal(DeviceType.META, d.Device.type);
            net.Dispose();
        }
    }

    [Fact]
    public void StableDiffusionLoadsAllItsNetworksOntoTheDevice()
    {
        using var sd = Dmd.Pipelines.StableDiffusion.Load(Path.Combine(AppContext.BaseDirectory, "TestData", "sd_pipeline", "model"), Meta);
        foreach (var (name, net) in new (string, nn.Module)[] { ("text encoder", sd.TextEncoder), ("unet", sd.Unet), ("vae", sd.Vae) })
            Assert.All(net.state_dict(), kv => Assert.True(kv.Value.device_type == DeviceType.META, $"{name}: {kv.Key} stayed on {kv.Value.device}"));
        Assert.Equal(DeviceType.META, sd.Denoiser.Device.type);
    }

    /// <summary>A denoiser without weights that records the device of what it is given and answers on it.</summary>
    sealed class DeviceProbe(Device device) : IDenoiser
    {
        public readonly List<DeviceType> Seen = new();
        public int LabelDim => 3;
        public Device Device => device;
        public Tensor Denoise(Tensor x, Tensor sigma, Tensor? labels = null)
        {
            Seen.Add(x.device_type);
            if (labels is not null) Seen.Add(labels.device_type);
            return zeros_like(x);
        }
    }

    [Fact]
    public void SamplingMovesEachBatchToTheNetworksDeviceAndTheSamplesBack()
    {
        var probe = new DeviceProbe(Meta);
        var z = ImageSampling.SeededNoise(new[] { 1, 4, 4 }, 0, 5);
        var y = ImageSampling.ClassMajorLabels(3, 2)[..5];
        try { ImageSampling.Generate(probe, z, y, "euler", 2, batch: 2); }
        catch (Exception e) when (e.Message.Contains("meta", StringComparison.OrdinalIgnoreCase)) { } // moving meta results back has no values
        Assert.NotEmpty(probe.Seen);
        Assert.All(probe.Seen, d => Assert.Equal(DeviceType.META, d));

        // a CPU network: nothing moves, the samples are the sampler's
        var cpu = new DeviceProbe(CPU);
        var x = ImageSampling.Generate(cpu, z, y, "euler", 2, batch: 2).Samples;
        Assert.Equal(DeviceType.CPU, x.device_type);
        Assert.Equal(z.shape, x.shape);
        Assert.All(cpu.Seen, d => Assert.Equal(DeviceType.CPU, d));
    }

    [Fact]
    public void AnUnavailableDeviceIsAOneLineErrorNamingTheBuildSwitch()
    {
        if (cuda.is_available()) return; // a CUDA build on a GPU machine accepts it
        var (code, output) = CliTests.Run("sample", "--model", Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-student"), "--device", "cuda", "--out", Path.Combine(TestUtil.TempDir(), "x.png"));
        Assert.Equal(2, code);
        Assert.Contains("error: --device cuda:", output);
        Assert.Contains("-p:TorchSharpBackend=cuda-linux", output);
        Assert.DoesNotContain("   at ", output);
        (code, output) = CliTests.Run("pairs", "--teacher", Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-teacher"), "--device", "tpu", "--out", TestUtil.TempDir());
        Assert.Equal(2, code);
        Assert.Contains("error: --device tpu: use cpu, cuda or cuda:N", output);
        (code, output) = CliTests.Run("bench", "--model", Path.Combine(TestUtil.RepoRoot, "models", "fashion-mnist-student"), "--device", "cuda");
        Assert.NotEqual(0, code); // bench runs on the CPU and does not take the option
    }
}
