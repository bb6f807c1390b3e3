using System.Text.Json.Nodes;
using Dmd.IO;
using Dmd.Networks;
using TorchSharp;
using TorchSharp.PyBridge;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace Dmd.Tests;

/// <summary>
/// Stable Diffusion v1.5's UNet and VAE against diffusers (TestData/sd_parity, made by make_sd_parity.py from diffusers
/// v0.27.2): tiny models loaded from diffusers folders reproduce diffusers' outputs, and the full-size models have
/// exactly the parameter names and shapes of diffusers' classes built from SD v1.5's configs.
/// </summary>
public sealed class StableDiffusionNetworkTests
{
    private readonly ITestOutputHelper output;

    public StableDiffusionNetworkTests(ITestOutputHelper output) => this.output = output;

    private static string Data(params string[] parts) => Path.Combine(new[] { AppContext.BaseDirectory, "TestData", "sd_parity" }.Concat(parts).ToArray());

    // float32 vs float64 in diffusers itself differs by 1-3e-6 on outputs of magnitude ~2; 2e-5 leaves room for other CPUs' kernels
    private const double Tolerance = 2e-5;

    private static double MaxDiff(Tensor a, Tensor b)
    {
        Assert.Equal(b.shape, a.shape);
        return (a - b).abs().max().item<float>();
    }

    [Fact]
    public void UNetReproducesDiffusersNoisePredictionFromAFolderLoadedByName()
    {
        using var scope = NewDisposeScope();
        using var net = UNet2DConditionModel.FromPretrained(Data("unet"));
        var io = Safetensors.LoadStateDict(Data("unet_io.safetensors"));
        using var noGrad = no_grad();
        var eps = net.forward(io["io.sample"], io["io.timestep"], io["io.encoder_hidden_states"]);
        double d = MaxDiff(eps, io["io.output"]);
        output.WriteLine($"UNet: max |ours - diffusers| = {d:E2} (max |eps| {io["io.output"].abs().max().item<float>():F2})");
        Assert.True(d < Tolerance, $"max |ours - diffusers| = {d:E2}");
    }

    [Fact]
    public void UNetMatchesDiffusersOnAnOddSizeWithAScalarTimestep()
    {
        // 15 x 13 latents: the stride-2 convolution rounds up, so the upsampler must go back to the skip's size
        // (diffusers' upsample_size); the timestep is a 0-d tensor broadcast over the batch.
        using var scope = NewDisposeScope();
        using var net = UNet2DConditionModel.FromPretrained(Data("unet"));
        var io = Safetensors.LoadStateDict(Data("unet_io.safetensors"));
        Assert.Equal(0, io["io.timestep_odd"].dim());
        using var noGrad = no_grad();
        var eps = net.forward(io["io.sample_odd"], io["io.timestep_odd"], io["io.encoder_hidden_states_odd"]);
        double d = MaxDiff(eps, io["io.output_odd"]);
        output.WriteLine($"UNet 15x13: max |ours - diffusers| = {d:E2}");
        Assert.True(d < Tolerance, $"max |ours - diffusers| = {d:E2}");
    }

    [Fact]
    public void EveryUNetAndVaeParameterGetsAGradient()
    {
        // DMD trains a copy of the UNet (the fake score) and backpropagates through the VAE decoder: no detached path.
        using var scope = NewDisposeScope();
        using var net = UNet2DConditionModel.FromPretrained(Data("unet"));
        using var vae = AutoencoderKL.FromPretrained(Data("vae"));
        var io = Safetensors.LoadStateDict(Data("unet_io.safetensors"));
        var eps = net.forward(io["io.sample"], io["io.timestep"], io["io.encoder_hidden_states"]);
        var image = vae.Decode(eps);
        var loss = eps.square().mean() + image.square().mean() + vae.Encode(image).Mean.square().mean();
        loss.backward();
        var none = net.named_parameters().Concat(vae.named_parameters())
            .Where(p => p.parameter.grad is null || p.parameter.grad.abs().max().item<float>() == 0 || !p.parameter.grad.isfinite().all().item<bool>())
            .Select(p => p.name).ToList();
        Assert.True(none.Count == 0, $"no (or a non-finite) gradient for {string.Join(", ", none.Take(8))}");
    }

    [Fact]
    public void UNetReadsAttentionHeadDimAsTheNumberOfHeads()
    {
        // SD v1.5's config says attention_head_dim 8 and means 8 heads; the fixture's 2 means 2 heads of 8 channels.
        // Reading it as a head width (16 / 2 = 8 heads of 2 channels) must break the parity above, so that test covers it.
        using var scope = NewDisposeScope();
        var config = UNet2DConditionConfig.Load(Data("unet"));
        Assert.Equal(new[] { 2, 2 }, config.AttentionHeads);
        using var misread = new UNet2DConditionModel(config with { AttentionHeads = new[] { 8, 16 } });
        Checkpoint.LoadModule(misread, Data("unet", DiffusersConfig.WeightsName));
        misread.eval();
        var io = Safetensors.LoadStateDict(Data("unet_io.safetensors"));
        using var noGrad = no_grad();
        double d = MaxDiff(misread.forward(io["io.sample"], io["io.timestep"], io["io.encoder_hidden_states"]), io["io.output"]);
        output.WriteLine($"heads misread as head width: max |ours - diffusers| = {d:E2}");
        Assert.True(d > 100 * Tolerance, $"the parity test would not notice misread heads ({d:E2})");
    }

    [Fact]
    public void VaeEncodeAndDecodeReproduceDiffusers()
    {
        using var scope = NewDisposeScope();
        using var vae = AutoencoderKL.FromPretrained(Data("vae"));
        var io = Safetensors.LoadStateDict(Data("vae_io.safetensors"));
        using var noGrad = no_grad();
        var posterior = vae.Encode(io["io.image"]);
        double dMean = MaxDiff(posterior.Mean, io["io.mean"]);
        double dLogVar = MaxDiff(posterior.LogVar, io["io.logvar"]);
        double dDecoded = MaxDiff(vae.Decode(io["io.latent"]), io["io.decoded"]);
        var drawn = posterior.Sample(new Generator(7));
        double dSample = MaxDiff(drawn, io["io.posterior_sample"]);
        output.WriteLine($"VAE: max |ours - diffusers| mean {dMean:E2}, logvar {dLogVar:E2}, decoded {dDecoded:E2}, posterior sample (seed 7) {dSample:E2}");
        Assert.True(dMean < Tolerance && dLogVar < Tolerance && dDecoded < Tolerance,
            $"mean {dMean:E2}, logvar {dLogVar:E2}, decoded {dDecoded:E2}");
        Assert.True(dSample < Tolerance, $"posterior sample with the same generator seed differs by {dSample:E2}");
    }

    [Fact]
    public void ConfigIsReadFromTheFolder()
    {
        var u = UNet2DConditionConfig.Load(Data("unet"));
        Assert.Equal(new[] { 16, 32 }, u.BlockOutChannels);
        Assert.Equal(new[] { "CrossAttnDownBlock2D", "DownBlock2D" }, u.DownBlockTypes);
        Assert.Equal(new[] { "UpBlock2D", "CrossAttnUpBlock2D" }, u.UpBlockTypes);
        Assert.Equal((1, 32, 8, 16), (u.LayersPerBlock, u.CrossAttentionDim, u.NormNumGroups, u.SampleSize));
        Assert.True(u.FlipSinToCos);
        var v = AutoencoderKLConfig.Load(Data("vae"));
        Assert.Equal(new[] { 16, 32 }, v.BlockOutChannels);
        Assert.Equal((3, 3, 4, 1, 8, 32), (v.InChannels, v.OutChannels, v.LatentChannels, v.LayersPerBlock, v.NormNumGroups, v.SampleSize));
        Assert.Equal(0.18215, v.ScalingFactor, 12);
        // the defaults are SD v1.5's published configs
        Assert.Equal(new[] { 8, 8, 8, 8 }, new UNet2DConditionConfig().AttentionHeads);
        Assert.Equal(0.18215, new AutoencoderKLConfig().ScalingFactor);
    }

    [Theory]
    [InlineData("unet", "use_linear_projection", "true")]
    [InlineData("unet", "class_embed_type", "\"timestep\"")]
    [InlineData("unet", "down_block_types", "[\"CrossAttnDownBlock2D\", \"AttnDownBlock2D\"]")]
    [InlineData("unet", "transformer_layers_per_block", "2")]
    [InlineData("unet", "norm_num_groups", "5")]
    [InlineData("vae", "up_block_types", "[\"UpDecoderBlock2D\", \"AttnUpDecoderBlock2D\"]")]
    [InlineData("vae", "use_quant_conv", "false")]
    public void UnimplementedConfigIsAOneLineErrorNamingTheField(string model, string field, string value)
    {
        var dir = TestUtil.TempDir();
        try
        {
            var json = JsonNode.Parse(File.ReadAllText(Data(model, "config.json")))!.AsObject();
            json[field] = JsonNode.Parse(value);
            File.WriteAllText(Path.Combine(dir, "config.json"), json.ToJsonString());
            var e = Assert.Throws<DmdInputException>(() =>
            {
                if (model == "unet") UNet2DConditionConfig.Load(dir);
                else AutoencoderKLConfig.Load(dir);
            });
            output.WriteLine(e.Message);
            Assert.DoesNotContain('\n', e.Message);
            Assert.Contains(field, e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void MissingConfigIsAnErrorNamingTheFile()
    {
        var dir = TestUtil.TempDir();
        try
        {
            var e = Assert.Throws<DmdInputException>(() => UNet2DConditionModel.FromPretrained(dir));
            Assert.Contains("config.json", e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("missing")]
    [InlineData("misshaped")]
    [InlineData("unexpected")]
    public void BadTensorInTheWeightsIsAOneLineErrorNamingIt(string fault)
    {
        const string name = "down_blocks.0.attentions.0.transformer_blocks.0.attn2.to_k.weight";
        var dir = TestUtil.TempDir();
        try
        {
            File.Copy(Data("unet", "config.json"), Path.Combine(dir, "config.json"));
            var weights = Safetensors.LoadStateDict(Data("unet", DiffusersConfig.WeightsName));
            switch (fault)
            {
                case "missing": weights.Remove(name); break;
                case "misshaped": weights[name] = zeros(16, 31); break;
                case "unexpected": weights[name.Replace("to_k", "to_kk")] = zeros(16, 32); break;
            }
            Checkpoint.SaveTensors(weights, Path.Combine(dir, DiffusersConfig.WeightsName));
            var e = Assert.Throws<DmdInputException>(() => UNet2DConditionModel.FromPretrained(dir));
            output.WriteLine(e.Message);
            Assert.DoesNotContain('\n', e.Message);
            Assert.Contains(fault == "unexpected" ? name.Replace("to_k", "to_kk") : name, e.Message);
            Assert.Contains(fault == "misshaped" ? "mis-shaped" : fault, e.Message);
        }
        finally { Directory.Delete(dir, true); }
    }

    [Fact]
    public void LegacyVaeAttentionNamesLoadAsDiffusersRenamesThem()
    {
        using var scope = NewDisposeScope();
        var dir = TestUtil.TempDir();
        try
        {
            File.Copy(Data("vae", "config.json"), Path.Combine(dir, "config.json"));
            var weights = Safetensors.LoadStateDict(Data("vae", DiffusersConfig.WeightsName));
            var legacy = weights.ToDictionary(kv => kv.Key
                .Replace("attentions.0.to_q.", "attentions.0.query.").Replace("attentions.0.to_k.", "attentions.0.key.")
                .Replace("attentions.0.to_v.", "attentions.0.value.").Replace("attentions.0.to_out.0.", "attentions.0.proj_attn."), kv => kv.Value);
            Assert.Equal(16, legacy.Keys.Count(k => k.Contains(".query.") || k.Contains(".key.") || k.Contains(".value.") || k.Contains(".proj_attn.")));
            Checkpoint.SaveTensors(legacy, Path.Combine(dir, DiffusersConfig.WeightsName));

            using var vae = AutoencoderKL.FromPretrained(dir);
            var io = Safetensors.LoadStateDict(Data("vae_io.safetensors"));
            using var noGrad = no_grad();
            double d = MaxDiff(vae.Decode(io["io.latent"]), io["io.decoded"]);
            double dMean = MaxDiff(vae.Encode(io["io.image"]).Mean, io["io.mean"]);
            Assert.True(d < Tolerance && dMean < Tolerance, $"legacy-named VAE: decoded {d:E2}, mean {dMean:E2}");
        }
        finally { Directory.Delete(dir, true); }
    }

    [Theory]
    [InlineData("unet")]
    [InlineData("vae")]
    public void FullSizeSd15ModelsHaveDiffusersParameterNamesAndShapes(string model)
    {
        // built on the meta device: shapes without memory (the UNet is 860 M parameters, 3.4 GB in float32)
        var expected = File.ReadAllLines(Data($"sd15_{model}_params.txt")).Where(l => l.Length > 0)
            .Select(l => l.Split(' ')).ToDictionary(p => p[0], p => p[1]);
        using nn.Module net = model == "unet" ? new UNet2DConditionModel(device: META) : new AutoencoderKL(device: META);
        var actual = net.state_dict().ToDictionary(kv => kv.Key, kv => string.Join(",", kv.Value.shape));
        Assert.All(net.state_dict().Values, t => Assert.Equal(DeviceType.META, t.device_type));
        var missing = expected.Keys.Except(actual.Keys).ToList();
        var extra = actual.Keys.Except(expected.Keys).ToList();
        var misshaped = expected.Keys.Intersect(actual.Keys).Where(k => expected[k] != actual[k]).Select(k => $"{k}: diffusers [{expected[k]}] ours [{actual[k]}]").ToList();
        long count = net.state_dict().Values.Sum(t => t.numel());
        output.WriteLine($"{model}: {actual.Count} tensors, {count} values");
        Assert.True(missing.Count == 0 && extra.Count == 0 && misshaped.Count == 0,
            $"missing {string.Join("; ", missing.Take(8))} | extra {string.Join("; ", extra.Take(8))} | mis-shaped {string.Join("; ", misshaped.Take(8))}");
        Assert.Equal(model == "unet" ? 859520964L : 83653863L, count);
    }
}
